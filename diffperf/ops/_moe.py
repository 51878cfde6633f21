"""One fused MoE layer on one rank: routing + grouped expert GEMMs (no all-to-all).

Semantics follow the measured ``moe.csv`` table: ``tokens`` enter the layer on this rank;
the ``tokens·top_k`` assignments spread over ``E`` experts, of which this rank holds
``E/ep``, each with its intermediate dimension split over ``tp``. With ``E_r = E/ep``,
``I_r = I/tp``, ``g = 3`` (gated: gate, up, down) or ``2``, ``a`` the GEMM-input activation
bytes and ``w`` the weight bytes per element:

- local assignments ``A = λ·T·k/ep`` with the busiest rank's load factor
  ``λ = (1 + (imbalance − 1)·(1 − 1/ep)) · λ_skew^skew_load_exponent`` (rank 0's latency is
  measured, and rank 0 is the busiest rank; a single rank, ``ep = 1``, holds exactly its own
  load under balanced routing, and the busiest of many ranks carries ``imbalance`` times the
  mean). Under skewed routing (``skew`` = the power-law exponent, e.g. 1.2) ``λ_skew`` is
  the busiest rank's expected share of power-law expert loads (:func:`busiest_rank_load`);
  balanced routing has ``λ_skew = 1``;
- experts touched on the rank ``E_t = E_r·f``: ``f = min(1, T·k/E)`` for balanced
  (round-robin) routing and ``1 − (1 − k/E)^T`` (random routing, see
  :func:`expected_experts_touched`) mixed in with weight ``min(skew, 1)``;
- grouped GEMMs, a roofline of the weight stream and the tensor-core work:
  ``t_gemm = smooth_max(t_c, E_t·b_e / (bw·mem_eff·b_e/(b_e + weight_half_bytes)))`` with
  ``b_e = g·H·I_r·w`` the weight bytes of one expert (small experts' weight streams do not
  reach full bandwidth) and
  ``t_c = 2A·H·I_r·(g−1)/(P·η·η_k(H)) + 2A·I_r·H/(P·η·η_k(I_r))`` (gate/up then down),
  ``η = moe.compute_eff · [moe.block_compute_eff] · η_tile(m_e) · [moe.wo_compute_eff]`` of the
  format's dense peak ``P`` (grouped expert GEMMs are their own kernels: their fraction of
  peak is fitted on MoE layers, not inherited from dense GEMMs),
  ``η_k(k) = k/(k + moe.k_half_elems)`` (short reductions, e.g. the down GEMM at high TP;
  the grouped kernels' own value: fitted free on H100 and B200 MoE layers it falls to ~1
  element, so those profiles set 0, where the dense GEMMs' is ~340) and ``η_tile`` the
  padding of the rows per touched expert ``m_e = A/(λ_bal·E_t)`` (the balanced part
  ``λ_bal = 1 + (imbalance − 1)(1 − 1/ep)`` of the load factor left out: balanced routing
  gives each expert exactly ``T·k/E`` rows) to the grouped GEMM's ``moe.tile_m_elems``;
  weight-only kernels (they dequantise each weight tile once per row tile, which this
  padding charges) pad to ``moe.wo_tile_m_elems`` up to that many rows and to
  ``moe.wo_tile_m_large_elems`` above (H100: 32, then 128 rows);
- activation traffic of the separate expand / activation / finalize kernels, additive, at
  their own bandwidth fraction (gathers and scatters of token rows):
  ``A·(H·(2 + a + 4) + I_r·(2(g−1) + 2 + a)) / (bw·act_mem_eff)``;
- routing, additive: ``routing_s + assign_s·T·k + permute_passes·T·H·2/(bw·act_mem_eff)``
  (top-k, sort and scatter of all ``T·k`` assignments, passes over the bf16 token rows);
  weight-only formats add ``wo_fixed_s·T/(T + wo_fixed_tokens_half) + wo_assign_s·T·k``
  (their separate kernel path, whose extra fixed time grows in over the first tokens: on
  H100 half of it at 1.5 tokens);
- block-scaled (``fp8_block``) layers add ``block_expert_s·E_r`` (set-up paid for every
  expert held on the rank, touched or not: DeepSeek-V3 with all 256 experts on one rank
  takes ~110 µs at one token on H100 and B200, against ~40 µs with 4-16 experts per rank)
  and ``block_act_passes`` extra passes over the bf16 assignment rows, ``A·H·2`` bytes each,
  at ``act_mem_eff`` (quantising the expanded rows to 1×128 blocks and laying out their
  scales; on H100 this path costs ~6 passes at 0.4 of the MoE rate, the two trading off; on
  B200 next to none).
"""

import jax.numpy as jnp
from jax.scipy.special import ndtri

from .._dtypes import activation_bytes, get_format
from .._numerics import ceil_div, pow_nonneg, safe_div, saturating, smooth_max2
from ..hardware import Hardware
from ._cost import OpCost


def expected_experts_touched(tokens, top_k, num_experts):
    """Expected distinct experts hit by ``tokens`` each routed to ``top_k`` of ``num_experts``.

    ``E·(1 − (1 − k/E)^T)`` (each expert is missed by one token with probability
    ``1 − k/E``, independently over tokens). ``T = 1`` gives ``k``; ``T → ∞`` gives ``E``.
    """
    t = jnp.asarray(tokens, dtype=float)
    k = jnp.asarray(top_k, dtype=float)
    e = jnp.asarray(num_experts, dtype=float)
    miss = jnp.clip(1.0 - safe_div(k, e), 0.0, 1.0)
    return e * (1.0 - pow_nonneg(miss, t))


def busiest_rank_load(tokens, top_k, num_experts, ep, alpha, nodes: int = 96):
    """Load of the busiest of ``ep`` ranks over the mean when expert loads follow a power law.

    Expert loads are drawn independently from ``p(x) ∝ x^(−alpha)`` on ``[1, 0.8·T]`` (on
    ``[0.01, 2]`` when ``T·k ≤ E``) and normalised to the ``T·k`` assignments; each rank
    holds ``E_r = E/ep`` contiguous experts, and the layer waits for the busiest rank (the
    synthetic skewed-routing workload of the measured tables: aiconfigurator 0.12.0's MoE
    collector, ``power_law_logits_v3``, which swaps the busiest rank to rank 0 and times
    it). With ``μ``, ``σ`` the moments of ``p`` and ``M = E[max of E draws]`` (quadrature
    on a log-spaced grid), two limits of ``E[max_j G_j]/(E_r·μ)`` for the rank sums ``G_j``:

    - one big draw: the rank holding the largest draw, ``(M + (E_r − 1)·μ_rest)/(E_r·μ)``
      with ``μ_rest = (E·μ − M)/(E − 1)`` (heavy tails: long ranges at many tokens);
    - many small ones: ``1 + σ·z(ep)/(μ·√E_r)``, ``z(n)`` the expected largest of ``n``
      standard normals (Blom: ``Φ⁻¹((n − 0.375)/(n + 0.25))``);

    combined as ``1 + (a³ + b³)^(1/3)`` of their excesses ``a``, ``b`` over 1 (the power 3
    chosen against the Monte Carlo below: powers 2 and 4 gave 6.6% and 4.8% median error,
    3 gave 3.9%; the plain larger of the two limits is up to 17% low). Against 100-draw
    Monte Carlo of that workload for E = 8-256, ep = 2-128 and T = 16-16384 it is within 4%
    (median) and 25% (worst, E = 8 at T = 16384); ``ep = 1`` gives exactly 1.
    """
    t = jnp.asarray(tokens, dtype=float)
    k = jnp.asarray(top_k, dtype=float)
    e = jnp.maximum(jnp.asarray(num_experts, dtype=float), 1.0)
    ep = jnp.clip(jnp.asarray(ep, dtype=float), 1.0, e)
    a = jnp.asarray(alpha, dtype=float)
    t, k, e, ep, a = jnp.broadcast_arrays(t, k, e, ep, a)
    many = t * k > e
    lo = jnp.where(many, 1.0, 0.01)
    hi = jnp.maximum(jnp.where(many, 0.8 * t, 2.0), lo * 1.001)
    u = jnp.linspace(0.0, 1.0, nodes).reshape((1,) * jnp.ndim(lo) + (nodes,))
    x = jnp.exp(jnp.log(lo)[..., None] + u * (jnp.log(hi) - jnp.log(lo))[..., None])
    pdf = jnp.exp(-a[..., None] * jnp.log(x))
    dx = jnp.diff(x, axis=-1)
    panels = lambda f: 0.5 * (f[..., 1:] + f[..., :-1]) * dx  # trapezoid rule
    trap = lambda f: jnp.sum(panels(f), axis=-1)
    z_norm = trap(pdf)
    mu = trap(x * pdf) / z_norm
    var = jnp.maximum(trap(x * x * pdf) / z_norm - mu * mu, 0.0)
    mass = jnp.cumsum(panels(pdf), axis=-1) / z_norm[..., None]
    cdf = jnp.concatenate([jnp.zeros_like(mass[..., :1]), mass], axis=-1)
    top = hi - trap(jnp.exp(e[..., None] * jnp.log(jnp.clip(cdf, 1e-300, 1.0))))
    e_r = e / ep
    rest = safe_div(e * mu - top, e - 1.0)
    jump = jnp.maximum(safe_div(top + (e_r - 1.0) * rest, e_r * mu) - 1.0, 0.0)
    z = ndtri((ep - 0.375) / (ep + 0.25))
    gauss = jnp.maximum(safe_div(jnp.sqrt(var) * z, mu * jnp.sqrt(e_r)), 0.0)
    return 1.0 + pow_nonneg(pow_nonneg(jump, 3.0) + pow_nonneg(gauss, 3.0), 1.0 / 3.0)


def rank_hit_probability(num_ranks, top_k, routing_groups=1.0, routing_topk_groups=1.0):
    """Probability that a token's ``top_k`` experts include one held by a given rank.

    Experts are spread evenly and contiguously over ``num_ranks`` ranks and split into
    ``G = routing_groups`` groups. Group-limited routing (DeepSeek-V3: ``M = 4`` of ``G = 8``)
    first picks ``M = routing_topk_groups`` groups by their best experts, so each picked
    group holds at least one of the ``c·M = min(k, M)`` leading experts; the other
    ``k − min(k, M)`` fall uniformly on the picked groups. With ``q = G/num_ranks`` groups per
    rank: ``P = (M/G)·(1 − (1 − c·q)(1 − q/M)^(k − min(k, M)))`` for ``q ≤ 1`` (the rank holds
    a share ``q`` of one group) and ``P = (1 − (1 − M/G)^q)·(1 − (1 − c)(1 − 1/M)^(k − min(k,
    M)))`` for ``q > 1`` (whole groups, drawn with replacement); the two agree at ``q = 1``.
    ``G = M = 1`` (unrestricted) gives ``1 − (1 − 1/num_ranks)^k``. DeepSeek-V3 on 8 ranks:
    ``P = 1/2``, i.e. 4 ranks per token instead of 5.2.
    """
    n = jnp.maximum(jnp.asarray(num_ranks, dtype=float), 1.0)
    k = jnp.maximum(jnp.asarray(top_k, dtype=float), 0.0)
    g = jnp.maximum(jnp.asarray(routing_groups, dtype=float), 1.0)
    m = jnp.clip(jnp.asarray(routing_topk_groups, dtype=float), 1.0, g)
    q = g / n
    lead = jnp.minimum(k, m)
    c = lead / m
    rest = k - lead

    q1 = jnp.minimum(q, 1.0)
    within = 1.0 - (1.0 - c * q1) * pow_nonneg(jnp.clip(1.0 - q1 / m, 0.0, 1.0), rest)
    picked = jnp.where(q <= 1.0, m / g, 1.0 - pow_nonneg(jnp.clip(1.0 - m / g, 0.0, 1.0), q))
    return picked * within


def moe_layer_cost(
    hw: Hardware,
    tokens,
    hidden,
    intermediate,
    num_experts,
    top_k,
    tp,
    ep,
    dtype: str,
    gated: bool = True,
    skew=0.0,
    tau: float = 0.0,
    skew_load=None,
) -> OpCost:
    """Time of one fused MoE layer on rank 0 (routing, permutation, grouped GEMMs).

    See the module docstring for the formulas. ``skew`` is a float leaf: 0 for balanced
    routing, the power-law exponent (e.g. 1.2) for skewed routing. ``tau`` only smooths
    the GEMM roofline max (bias at most a factor ``2**tau``).

    **Arguments:** ``hw``; ``tokens`` (per rank, before routing), ``hidden``,
    ``intermediate`` (per expert, before TP), ``num_experts``, ``top_k``, ``tp``, ``ep``
    (float leaves); ``dtype`` (static format of the expert weights); ``gated`` (static);
    ``skew``; ``tau`` (smooth-max temperature, 0 = exact); ``skew_load``: the busiest rank's
    power-law load factor if already known (:func:`busiest_rank_load` of these tokens,
    top-k, experts, ep and skew; it holds no hardware parameter, so a fit over fixed rows
    computes it once), else computed here (skipped when ``skew`` is a Python 0).

    **Returns:** an :class:`OpCost` (``compute_s``: tensor-core time; ``memory_s``: weight
    stream plus activation traffic; ``time_s`` also holds routing).
    """
    me = hw.accel.eff.moe
    fmt = get_format(dtype)
    t = jnp.asarray(tokens, dtype=float)
    h = jnp.asarray(hidden, dtype=float)
    inter = jnp.asarray(intermediate, dtype=float)
    e = jnp.asarray(num_experts, dtype=float)
    k = jnp.asarray(top_k, dtype=float)
    tp = jnp.asarray(tp, dtype=float)
    ep = jnp.asarray(ep, dtype=float)
    g = 3.0 if gated else 2.0
    a_b = activation_bytes(dtype)
    w_b = fmt.bytes_per_element
    bw_peak = hw.accel.hbm.bw_bytes_per_s
    act_bw = bw_peak * me.act_mem_eff

    e_r = safe_div(e, ep)
    i_r = safe_div(inter, tp)
    ep1 = jnp.maximum(ep, 1.0)
    balanced_load = 1.0 + (me.imbalance - 1.0) * (1.0 - safe_div(1.0, ep1))
    balanced_only = isinstance(skew, (int, float)) and skew == 0.0
    skew = jnp.asarray(skew, dtype=float)
    skewed = skew > 0.0
    if skew_load is None:
        skew_load = (
            1.0 if balanced_only else busiest_rank_load(t, k, e, ep1, jnp.where(skewed, skew, 1.2))
        )
    skew_factor = jnp.where(skewed, pow_nonneg(skew_load, me.skew_load_exponent), 1.0)
    load = balanced_load * skew_factor
    assign = safe_div(t * k, ep) * load
    f_bal = jnp.minimum(1.0, safe_div(t * k, e))
    f_rand = safe_div(expected_experts_touched(t, k, e), e)
    w = jnp.clip(skew, 0.0, 1.0)
    touched = e_r * (f_bal + w * (f_rand - f_bal))

    # grouped GEMMs: tensor-core work vs the weight stream. Rows per expert for the tile
    # padding leave out the balanced straggler factor: balanced routing gives every expert
    # exactly T·k/E rows, and a factor a hair above 1 must not spill a padded tile
    m_e = safe_div(safe_div(assign, balanced_load), touched)
    if fmt.weight_only:  # the small row tile up to its size, the large one above
        small = me.wo_tile_m_elems
        tile_m = jnp.where(m_e > small, me.wo_tile_m_large_elems, small)
    else:
        tile_m = me.tile_m_elems
    tile_eff = safe_div(m_e, ceil_div(m_e, tile_m) * tile_m)
    eff = me.compute_eff * tile_eff
    block_scaled = dtype == "fp8_block"  # its own kernel path (module docstring)
    if block_scaled:
        eff = eff * me.block_compute_eff
    if fmt.weight_only:
        eff = eff * me.wo_compute_eff
    peak = hw.accel.peak_flop_per_s(dtype) * eff
    flop_up = 2.0 * assign * h * i_r * (g - 1.0)
    flop_down = 2.0 * assign * i_r * h
    compute_s = safe_div(flop_up, peak * saturating(h, me.k_half_elems)) + safe_div(
        flop_down, peak * saturating(i_r, me.k_half_elems)
    )
    expert_bytes = g * h * i_r * w_b
    w_bytes = touched * expert_bytes
    w_bw = bw_peak * me.mem_eff * safe_div(expert_bytes, expert_bytes + me.weight_half_bytes)
    gemm_s = smooth_max2(compute_s, safe_div(w_bytes, w_bw), tau)

    # activation traffic of expand / activation / finalize kernels
    act_bytes = assign * (h * (2.0 + a_b + 4.0) + i_r * (2.0 * (g - 1.0) + 2.0 + a_b))
    if block_scaled:  # 1x128-block quantisation of the expanded rows, scale layout
        act_bytes = act_bytes + me.block_act_passes * assign * h * 2.0
    # routing: fixed launch chain, per-assignment sort/scatter, passes over token rows
    tok_bytes = me.permute_passes * t * h * 2.0
    route_s = me.routing_s + me.assign_s * t * k
    if fmt.weight_only:
        half = me.wo_fixed_tokens_half
        grow_in = jnp.where(half > 0.0, saturating(t, half), 1.0)
        route_s = route_s + me.wo_fixed_s * grow_in + me.wo_assign_s * t * k
    if block_scaled:  # per-expert set-up, for every expert the rank holds
        route_s = route_s + me.block_expert_s * e_r
    bytes_ = w_bytes + act_bytes + tok_bytes
    time_s = gemm_s + safe_div(act_bytes + tok_bytes, act_bw) + route_s
    flop = flop_up + flop_down
    memory_s = safe_div(w_bytes, w_bw) + safe_div(act_bytes + tok_bytes, act_bw)
    return OpCost(time_s, compute_s, memory_s, jnp.zeros_like(time_s), flop, bytes_)
