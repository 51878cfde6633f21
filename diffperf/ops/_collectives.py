"""Collective communication costs over a two-tier fabric (scale-up domain + scale-out NICs).

Every function is pure JAX: sizes and group sizes are float leaves (a relaxed, continuous
``num_devices`` is fine: no Python branch looks at it), ``impl``/``dtype`` are static strings.
Each returns an :class:`OpCost` whose ``time_s`` and ``comm_s`` are the collective's time.

Model (alpha-beta per tier, Hockney; Thakur et al. 2005 for the ring volumes):

- One tier moving ``V`` bytes per device in ``k`` steps of shard ``s`` bytes:
  ``t = k·α + V/(bw·η(g)) · (1 + (s_sat/s)^p)``, ``η(g) = η·(1 - loss/g)``; the bracket is a
  bandwidth efficiency that saturates with the shard size (``p = 1/2`` is the optimal-chunk
  pipeline ``(√(kα) + √T)²`` with its cross term), so small messages are latency bound.
  The NIC tier has its own ``s_sat`` (``scaleout_saturation_bytes``).
  ``α`` = fabric latency × ``*_latency_factor``.
- Groups larger than the scale-up domain ``d`` are hierarchical: ``g = min(n, d)`` ranks per
  domain (smooth min at ``tau > 0``), ``m = n/g`` domains; the inter-domain part runs on the
  NIC tier (bandwidth ``nic·η_out/oversubscription``) over ``S/g`` per device (rail-aligned
  NICs each carry one slice). At ``n <= d``, ``m = 1`` and the NIC term vanishes.
- all-reduce (ring): ``V = 2(g-1)/g·S``, ``2(g-1)`` steps; NVLink SHARP (NVLS) in-switch
  reduction for fp16/bf16/fp32: ``t = α_nvls + S/(bw·η_nvls)``; NCCL's tuner picks the faster
  (smooth min at ``tau > 0``). Inter-domain: ring all-reduce over ``m`` on ``S/g``.
- all-gather / reduce-scatter (``S`` = the full gathered buffer, nccl-tests' size):
  ``V = (g-1)/g·S``, ``g-1`` steps; inter-domain ``(m-1)/m·S/g``.
- all-to-all (``S`` = per-rank send buffer): ``S·(g-1)/n`` bytes stay in the domain,
  ``S·(n-g)/n`` cross NICs, and all of ``S`` passes NCCL's point-to-point channels (self
  copy included), all concurrently (smooth max); ``log2(n)`` latency steps (pairwise
  exchanges are issued together). Its own small-group loss (``alltoall_small_group_loss``):
  0 through a switch, where pairwise sends use every link at any group size.
- Point-to-point protocol (all-to-all and send/recv are NCCL p2p operations): up to
  ``p2p_ll_threshold_bytes`` per peer NCCL sends with its low-latency protocol (flags inline
  with the data); above it, the Simple protocol adds ``p2p_simple_latency_s`` of
  synchronisation per operation. A hard switch at ``tau = 0``; at ``tau > 0`` a logistic
  blend in ``log(per-peer bytes / threshold)`` of width ``tau``.
- TRT-LLM custom all-reduce: one-shot (each rank reads all ``n-1`` peers' buffers, 1 step)
  or two-shot (reduce-scatter + all-gather, 2 steps), whichever is faster; NCCL beyond the
  domain.
- A group of one costs zero: every term carries ``clip(n - 1, 0, 1)`` or a ``(g-1)`` factor,
  so gradients stay finite at ``n = 1``.
"""

import jax
import jax.numpy as jnp

from .._dtypes import activation_bytes, get_format
from .._numerics import pow_nonneg, safe_div, smooth_max2, smooth_min2
from ..hardware import Hardware
from ._cost import OpCost
from ._moe import rank_hit_probability


_NVLS_DTYPES = frozenset({"fp16", "bf16", "fp32"})


def _f(x):
    return jnp.asarray(x, dtype=float)


def _log2_pos(x):
    ok = x > 1
    return jnp.where(ok, jnp.log2(jnp.where(ok, x, 2.0)), 0.0)


def _active(n):
    """1 for groups of two or more, 0 for one device, linear in between (relaxed n)."""
    return jnp.clip(n - 1.0, 0.0, 1.0)


def _comm_cost(t) -> OpCost:
    t = _f(t)
    return OpCost(t, comm_s=t)


def _split(hw: Hardware, n, tau: float):
    """(n, g, m): group size clipped to >= 1, ranks per scale-up domain, number of domains."""
    n = jnp.maximum(_f(n), 1.0)
    d = jnp.maximum(_f(hw.fabric.scaleup_domain_size), 1.0)
    g = smooth_min2(n, d, tau)
    g = jnp.clip(g, 1.0, n)
    m = safe_div(n, g)
    return n, g, m


def _transfer_s(hw: Hardware, volume_bytes, shard_bytes, bw, eff, scaleout: bool = False):
    """``V/(bw·eff) · (1 + (s_sat/s)^p)``: bandwidth time with size-saturating efficiency.

    ``s_sat`` is ``scaleout_saturation_bytes`` on the NIC tier (``scaleout=True``), else
    ``saturation_bytes``.
    """
    e = hw.accel.eff.comm
    t = safe_div(volume_bytes, bw * eff)
    s_sat = e.scaleout_saturation_bytes if scaleout else e.saturation_bytes
    sat = pow_nonneg(safe_div(s_sat, shard_bytes), e.saturation_exponent)
    return t * (1.0 + sat)


def _up_eff(hw: Hardware, g, loss=None):
    """Scale-up bandwidth fraction of a group of ``g``: ``η·(1 - loss/g)``; ``loss`` defaults
    to the ring collectives' ``small_group_loss``."""
    e = hw.accel.eff.comm
    loss = e.small_group_loss if loss is None else loss
    return e.scaleup_bw_eff * (1.0 - safe_div(loss, g))


def _alpha_up(hw: Hardware):
    return hw.fabric.scaleup_latency_s * hw.accel.eff.comm.scaleup_latency_factor


def _alpha_out(hw: Hardware):
    return hw.fabric.scaleout_latency_s * hw.accel.eff.comm.scaleout_latency_factor


def _out_bw(hw: Hardware):
    e = hw.accel.eff.comm
    bw = hw.fabric.scaleout_bw_bytes_per_s * e.scaleout_bw_eff
    return safe_div(bw, hw.fabric.oversubscription)


def _ring_out_s(hw: Hardware, volume_bytes, steps, shard_bytes):
    """Inter-domain ring part on the NIC tier (bandwidth already includes efficiency)."""
    return steps * _alpha_out(hw) + _transfer_s(
        hw, volume_bytes, shard_bytes, _out_bw(hw), 1.0, scaleout=True
    )


def _ring_up_s(hw: Hardware, volume_bytes, steps, shard_bytes, g, factor=1.0):
    bw = hw.fabric.scaleup_bw_bytes_per_s
    return steps * _alpha_up(hw) + _transfer_s(
        hw, volume_bytes, shard_bytes, bw, _up_eff(hw, g) * factor
    )


def _p2p_protocol_s(hw: Hardware, peer_bytes, tau: float):
    """Extra latency of NCCL's Simple protocol for ``peer_bytes`` per peer (0 under LL)."""
    e = hw.accel.eff.comm
    b = _f(peer_bytes)
    thr = e.p2p_ll_threshold_bytes
    if tau > 0:
        ok = (b > 0) & (thr > 0)
        z = safe_div(jnp.log(jnp.where(ok, b, 1.0)) - jnp.log(jnp.where(ok, thr, 1.0)), tau)
        w = jnp.where(ok, jax.nn.sigmoid(z), jnp.where(b > thr, 1.0, 0.0))
    else:
        w = jnp.where(b > thr, 1.0, 0.0)
    return w * e.p2p_simple_latency_s


def _check_impl(impl: str, allowed: tuple[str, ...], fn: str):
    if impl not in allowed:
        raise ValueError(f"{fn}: impl={impl!r} is not one of {allowed}")


def all_reduce_cost(
    hw: Hardware,
    message_bytes,
    num_devices,
    tau: float = 0.0,
    impl: str = "nccl",
    dtype: str = "bf16",
) -> OpCost:
    """All-reduce of ``message_bytes`` per rank over ``num_devices`` ranks.

    ``impl``: ``"nccl"`` (ring or NVLS in-switch reduction, whichever is faster; hierarchical
    beyond the scale-up domain), ``"ring"`` (no NVLS) or ``"custom"`` (TRT-LLM one-shot /
    two-shot kernels inside the domain, NCCL beyond it). ``dtype`` (static) decides whether
    the switch can reduce it (fp16/bf16/fp32). See the module docstring for the formulas.

    **Returns:** :class:`OpCost` with ``time_s == comm_s`` in seconds.
    """
    _check_impl(impl, ("nccl", "ring", "custom"), "all_reduce_cost")
    get_format(dtype)
    e = hw.accel.eff.comm
    S = _f(message_bytes)
    n, g, m = _split(hw, num_devices, tau)
    shard = safe_div(S, g)
    ring = _ring_up_s(hw, 2.0 * (g - 1.0) * shard, 2.0 * (g - 1.0), shard, g, e.allreduce_bw_factor)
    intra = ring
    if impl == "nccl" and dtype in _NVLS_DTYPES:
        has = e.nvls_bw_eff > 0
        nvls = e.nvls_latency_s + safe_div(S, hw.fabric.scaleup_bw_bytes_per_s * e.nvls_bw_eff)
        nvls = nvls * (1.0 + pow_nonneg(safe_div(e.saturation_bytes, shard), e.saturation_exponent))
        intra = smooth_min2(ring, jnp.where(has, nvls, ring), tau)
    inter = _ring_out_s(
        hw, 2.0 * (m - 1.0) * safe_div(shard, m), 2.0 * (m - 1.0), safe_div(shard, m)
    )
    nccl = e.base_latency_s + intra + inter
    if impl == "custom":
        bw = hw.fabric.scaleup_bw_bytes_per_s * e.custom_bw_eff
        a = _alpha_up(hw)
        one = a + _transfer_s(hw, (g - 1.0) * S, S, bw, 1.0)
        two = 2.0 * a + _transfer_s(hw, 2.0 * (g - 1.0) * shard, shard, bw, 1.0)
        custom = e.custom_latency_s + smooth_min2(one, two, tau)
        t = jnp.where(m > 1.0, nccl, custom)
    else:
        t = nccl
    return _comm_cost(_active(n) * t)


def _gather_like(hw: Hardware, message_bytes, num_devices, tau: float) -> OpCost:
    e = hw.accel.eff.comm
    S = _f(message_bytes)
    n, g, m = _split(hw, num_devices, tau)
    shard = safe_div(S, n)
    intra = _ring_up_s(hw, (g - 1.0) * safe_div(S, g), g - 1.0, shard, g)
    inter = _ring_out_s(hw, (m - 1.0) * safe_div(S, n), m - 1.0, shard)
    return _comm_cost(_active(n) * (e.base_latency_s + intra + inter))


def all_gather_cost(
    hw: Hardware, message_bytes, num_devices, tau: float = 0.0, impl: str = "nccl"
) -> OpCost:
    """All-gather; ``message_bytes`` is the gathered (output) buffer per rank, as nccl-tests.

    ``t = base + (g-1)·α + (g-1)/g·S/(bw·η(g))·sat + [(m-1)·α_out + (m-1)/n·S/bw_out·sat]``.
    """
    _check_impl(impl, ("nccl",), "all_gather_cost")
    return _gather_like(hw, message_bytes, num_devices, tau)


def reduce_scatter_cost(
    hw: Hardware, message_bytes, num_devices, tau: float = 0.0, impl: str = "nccl"
) -> OpCost:
    """Reduce-scatter; ``message_bytes`` is the input buffer per rank (nccl-tests' size).

    Same volumes and steps as :func:`all_gather_cost` (mirror image).
    """
    _check_impl(impl, ("nccl",), "reduce_scatter_cost")
    return _gather_like(hw, message_bytes, num_devices, tau)


def all_to_all_cost(
    hw: Hardware, message_bytes, num_devices, tau: float = 0.0, impl: str = "nccl"
) -> OpCost:
    """All-to-all; ``message_bytes`` is the per-rank send buffer (``S/n`` to each peer).

    ``t = base + log2(n)·α + smooth_max(S(g-1)/n / (bw·η·f_a2a), S(n-g)/n / bw_out,``
    ``S / bw_ch) + t_protocol(S/n)``: the scale-up links, the NICs and NCCL's point-to-point
    channels (``p2p_channel_bw_bytes_per_s``, 0 = no ceiling; they carry the self-copy too,
    so NVLink peers get ``(g-1)/g`` of them, which is why two GPUs exchange at about half
    the rate of eight) work concurrently; ``t_protocol`` is NCCL's Simple-protocol latency
    above its per-peer LL threshold. ``η = η_up·(1 - alltoall_small_group_loss/g)``: 0 on
    a switch (pairwise sends reach every peer over all of a GPU's links at any group size),
    > 0 on a direct mesh, where a small group uses few of the links.
    """
    _check_impl(impl, ("nccl",), "all_to_all_cost")
    e = hw.accel.eff.comm
    S = _f(message_bytes)
    n, g, m = _split(hw, num_devices, tau)
    shard = safe_div(S, n)
    up = _transfer_s(
        hw,
        (g - 1.0) * shard,
        shard,
        hw.fabric.scaleup_bw_bytes_per_s,
        _up_eff(hw, g, e.alltoall_small_group_loss) * e.alltoall_bw_factor,
    )
    out = _transfer_s(hw, (n - g) * shard, shard, _out_bw(hw), 1.0, scaleout=True)
    has_ch = e.p2p_channel_bw_bytes_per_s > 0
    ch = jnp.where(has_ch, _transfer_s(hw, S, shard, e.p2p_channel_bw_bytes_per_s, 1.0), 0.0)
    lat = _log2_pos(g) * _alpha_up(hw) + _log2_pos(m) * _alpha_out(hw)
    lat = lat + _p2p_protocol_s(hw, shard, tau)
    t = e.base_latency_s + lat + smooth_max2(smooth_max2(up, out, tau), ch, tau)
    return _comm_cost(_active(n) * t)


def p2p_cost(hw: Hardware, message_bytes, cross_domain=0.0, tau: float = 0.0) -> OpCost:
    """Point-to-point send/recv of ``message_bytes`` between two ranks.

    ``cross_domain`` in [0, 1] is the probability (or relaxed indicator) that the peer is in
    another scale-up domain: ``t = base + (1-x)·t_up + x·t_out + t_protocol(S)`` with
    ``t_tier = α + S/bw·sat`` and ``t_protocol`` NCCL's Simple-protocol latency above its LL
    threshold (module docstring).
    """
    e = hw.accel.eff.comm
    S = _f(message_bytes)
    x = jnp.clip(_f(cross_domain), 0.0, 1.0)
    up = _alpha_up(hw) + _transfer_s(hw, S, S, hw.fabric.scaleup_bw_bytes_per_s, _up_eff(hw, 2.0))
    out = _alpha_out(hw) + _transfer_s(hw, S, S, _out_bw(hw), 1.0, scaleout=True)
    t = e.base_latency_s + (1.0 - x) * up + x * out + _p2p_protocol_s(hw, S, tau)
    return _comm_cost(jnp.where(S > 0, t, 0.0))


# ---------------------------------------------------------------------------------------
# MoE dispatch / combine (DeepEP-style all-to-all of routed token copies)

_MOE_IMPLS = ("deepep_ht", "deepep_ll", "nvlink_one_sided", "nvlink_two_sided")


def moe_impl_kind(impl: str) -> str:
    """``"ht"`` or ``"ll"``: which parameter set and routing (dedup per rank or not)."""
    s = impl.lower()
    if "ll" in s.split("_") or "low_latency" in s or "one_sided" in s:
        return "ll"
    return "ht"


def _moe_payload_bytes(hw: Hardware, dtype: str) -> float:
    """Bytes per hidden element on the wire. fp4 formats on a device without fp4 compute are
    sent as fp8 (+ one fp32 scale per 128 elements); weight-only formats send bf16."""
    f = get_format(dtype)
    if f.compute == "fp4" and "fp4" not in hw.accel.native:
        return 1.0 + 4.0 / 128.0
    return activation_bytes(dtype)


def _moe_routes(ep, top_k, dedup: bool, groups=1.0, topk_groups=1.0):
    """Expected remote destinations per token: distinct ranks (dedup) or routed copies."""
    if dedup:
        # each other rank receives a token iff one of its top_k experts lives there:
        # P = 1 - (1 - 1/ep)^top_k without group-limited routing (rank_hit_probability).
        return (ep - 1.0) * rank_hit_probability(ep, top_k, groups, topk_groups)
    return top_k * safe_div(ep - 1.0, ep)


def _moe_a2a(
    hw: Hardware,
    tokens,
    hidden,
    top_k,
    num_experts,
    ep,
    payload_bytes: float,
    impl: str,
    tau: float,
    combine: bool,
    groups=1.0,
    topk_groups=1.0,
) -> OpCost:
    del num_experts  # routing uniform over the chosen groups' experts; E/ep experts per rank
    e = hw.accel.eff.comm
    kind = moe_impl_kind(impl)
    T, H, k = _f(tokens), _f(hidden), jnp.maximum(_f(top_k), 0.0)
    ep_, g, m = _split(hw, ep, tau)
    dedup = kind == "ht"
    remote = _moe_routes(ep_, k, dedup, groups, topk_groups)  # per token
    # of the remote destinations, the in-domain share is (g-1)/(ep-1); the rest cross NICs
    in_frac = safe_div(g - 1.0, ep_ - 1.0)
    tok_bytes = H * payload_bytes
    if kind == "ht":
        lat, eff, per_copy = e.ht_latency_s, e.ht_bw_eff, e.ht_per_copy_s
        combine_factor = e.combine_bw_factor
        # DeepEP HT sends each token once per remote domain over RDMA, then forwards it
        # over NVLink: out copies = distinct remote domains.
        out_copies = (m - 1.0) * rank_hit_probability(m, k, groups, topk_groups)
        up_copies = remote  # in-domain sends plus the forwarding of copies from outside
    else:
        lat, eff, per_copy = e.ll_latency_s, e.ll_bw_eff, e.ll_per_copy_s
        combine_factor = e.ll_combine_bw_factor
        if combine:
            lat = e.ll_combine_latency_s
        out_copies = remote * (1.0 - in_frac)
        up_copies = remote * in_frac
    if combine:
        eff = eff * combine_factor
    up_bytes = T * up_copies * tok_bytes
    out_bytes = T * out_copies * tok_bytes
    up = _transfer_s(hw, up_bytes, tok_bytes * T, hw.fabric.scaleup_bw_bytes_per_s, eff)
    out = _transfer_s(hw, out_bytes, tok_bytes * T, _out_bw(hw), 1.0, scaleout=True)
    t = lat + 2.0 * _active(m) * _alpha_out(hw) + T * remote * per_copy + smooth_max2(up, out, tau)
    return _comm_cost(_active(ep_) * t)


def moe_dispatch_cost(
    hw: Hardware,
    tokens,
    hidden,
    top_k,
    num_experts,
    ep,
    dtype: str = "bf16",
    impl: str = "deepep_ht",
    tau: float = 0.0,
    routing_groups=1.0,
    routing_topk_groups=1.0,
) -> OpCost:
    """MoE dispatch: send each of ``tokens`` (per rank) ``hidden``-wide activations to the
    ranks holding its ``top_k`` experts, over ``ep`` ranks.

    Remote destinations per token: HT (dedup per rank) ``(ep-1)·P_hit(ep)``, with
    ``P_hit = 1-(1-1/ep)^k`` for unrestricted routing and fewer ranks under group-limited
    routing (``routing_topk_groups`` of ``routing_groups`` expert groups per token, e.g.
    DeepSeek-V3's 4 of 8; :func:`diffperf.ops._moe.rank_hit_probability`); LL (per expert
    copy) ``k(ep-1)/ep``. In-domain share ``(g-1)/(ep-1)`` goes over scale-up; with
    ``ep > d`` HT sends one RDMA copy per remote domain ``(m-1)·P_hit(m)``.
    ``t = lat + T·remote·c_copy + smooth_max(bytes_up/(bw·η)·sat, bytes_out/bw_out·sat)``.
    ``impl``: ``deepep_ht``/``deepep_ll`` (also ``trtllm_``-prefixed names; ``one_sided``
    uses the LL set, anything else the HT set). ``dtype``: payload format.
    """
    return _moe_a2a(
        hw,
        tokens,
        hidden,
        top_k,
        num_experts,
        ep,
        _moe_payload_bytes(hw, dtype),
        impl,
        tau,
        combine=False,
        groups=routing_groups,
        topk_groups=routing_topk_groups,
    )


def moe_combine_cost(
    hw: Hardware,
    tokens,
    hidden,
    top_k,
    num_experts,
    ep,
    dtype: str = "bf16",
    impl: str = "deepep_ht",
    tau: float = 0.0,
    low_precision: bool = False,
    routing_groups=1.0,
    routing_topk_groups=1.0,
) -> OpCost:
    """MoE combine: the reverse of :func:`moe_dispatch_cost` with a weighted sum on receive.

    The payload is bf16 unless ``low_precision`` (then ``dtype``'s bytes); bandwidth scaled by
    ``combine_bw_factor`` (HT) or ``ll_combine_bw_factor`` (LL).
    """
    payload = _moe_payload_bytes(hw, dtype) if low_precision else 2.0
    shape = (hw, tokens, hidden, top_k, num_experts, ep)
    routing = {"groups": routing_groups, "topk_groups": routing_topk_groups}
    return _moe_a2a(*shape, payload, impl, tau, combine=True, **routing)


def moe_prepare_cost(
    hw: Hardware, tokens, top_k, num_experts, ep, impl: str = "deepep_ht", tau: float = 0.0
) -> OpCost:
    """Routing-metadata exchange before dispatch (counts, expert ids and weights).

    Not fitted (no training rows): one NCCL-like small all-to-all of ``tokens·top_k·8`` bytes
    (int32 id + fp32 weight) plus a per-expert count table: ``base + log2(ep)·α + bytes/bw``.
    """
    del impl
    e = hw.accel.eff.comm
    T, k, E = _f(tokens), _f(top_k), _f(num_experts)
    ep_, g, m = _split(hw, ep, tau)
    meta = T * k * 8.0 + E * 4.0
    up = _transfer_s(hw, meta, meta, hw.fabric.scaleup_bw_bytes_per_s, _up_eff(hw, g))
    lat = e.base_latency_s + _log2_pos(g) * _alpha_up(hw) + _log2_pos(m) * _alpha_out(hw)
    return _comm_cost(_active(ep_) * (lat + up))
