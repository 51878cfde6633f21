"""One fused MoE layer on one rank: routing + grouped expert GEMMs (no all-to-all).

Semantics follow the measured ``moe.csv`` table: ``tokens`` enter the layer on this rank;
the ``tokens·top_k`` assignments spread over ``E`` experts, of which this rank holds
``E/ep``, each with its intermediate dimension split over ``tp``. With ``E_r = E/ep``,
``I_r = I/tp`` and ``g = 3`` (gated: gate, up, down) or ``2``:

- assignments on the rank ``A = T·k/ep``, times the load factor
  ``λ = imbalance · ep^(skew_ep_exponent·skew)`` for the busiest rank (rank 0);
- experts touched on the rank ``E_t = E_r·f``: ``f = min(1, T·k/E)`` for balanced
  (round-robin) routing and ``1 − (1 − k/E)^T`` (random routing, see
  :func:`expected_experts_touched`) mixed in with weight ``min(skew, 1)``: the weights read
  grow with the batch until every local expert is touched;
- bytes ``= E_t·g·H·I_r·w + λA·H·(a + o) + λA·I_r·2a`` (expert weights, token rows in/out,
  the intermediate activation) plus ``permute_passes·T·H·a`` for routing/permutation;
- FLOP ``= 2·λA·H·I_r·g``, on the precision's peak with efficiency
  ``eff.gemm.compute_eff_<prec> · [block/dequant] · moe.compute_eff · η_tile(m_e)``, where
  ``m_e = λA/E_t`` is the rows per touched expert padded to the grouped GEMM's ``moe.tile_m_elems``;
- ``t = smooth_max(FLOP/(peak·η_c), bytes/(bw·moe.mem_eff)) + routing_s``.
"""

import jax.numpy as jnp

from .._dtypes import activation_bytes, get_format
from .._numerics import ceil_div, safe_div, smooth_max2
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
    ok = miss > 0
    # miss**T with a finite gradient at miss == 0 (k == E)
    pw = jnp.where(ok, jnp.exp(t * jnp.log(jnp.where(ok, miss, 1.0))), 0.0)
    return e * (1.0 - pw)


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
) -> OpCost:
    """Time of one fused MoE layer on rank 0 (routing, permutation, grouped GEMMs).

    See the module docstring for the formulas. ``skew`` is a float leaf: 0 for balanced
    routing, the power-law exponent (e.g. 1.2) for skewed routing.

    **Arguments:** ``hw``; ``tokens`` (per rank, before routing), ``hidden``,
    ``intermediate`` (per expert, before TP), ``num_experts``, ``top_k``, ``tp``, ``ep``
    (float leaves); ``dtype`` (static format of the expert weights); ``gated`` (static);
    ``skew``; ``tau`` (smooth-max temperature, 0 = exact).

    **Returns:** an :class:`OpCost`.
    """
    ge = hw.accel.eff.gemm
    me = hw.accel.eff.moe
    fmt = get_format(dtype)
    prec = hw.accel.compute_precision(dtype)
    t = jnp.asarray(tokens, dtype=float)
    h = jnp.asarray(hidden, dtype=float)
    inter = jnp.asarray(intermediate, dtype=float)
    e = jnp.asarray(num_experts, dtype=float)
    k = jnp.asarray(top_k, dtype=float)
    tp = jnp.asarray(tp, dtype=float)
    ep = jnp.asarray(ep, dtype=float)
    skew = jnp.asarray(skew, dtype=float)
    g = 3.0 if gated else 2.0
    a_b = activation_bytes(dtype)
    w_b = fmt.bytes_per_element

    e_r = safe_div(e, ep)
    i_r = safe_div(inter, tp)
    load = me.imbalance * jnp.exp(me.skew_ep_exponent * skew * jnp.log(jnp.maximum(ep, 1.0)))
    assign = safe_div(t * k, ep) * load
    f_bal = jnp.minimum(1.0, safe_div(t * k, e))
    f_rand = safe_div(expected_experts_touched(t, k, e), e)
    w = jnp.clip(skew, 0.0, 1.0)
    touched = e_r * (f_bal + w * (f_rand - f_bal))

    bytes_ = (
        touched * g * h * i_r * w_b
        + assign * h * (a_b + 2.0)
        + assign * i_r * 2.0 * a_b
        + me.permute_passes * t * h * a_b
    )
    flop = 2.0 * assign * h * i_r * g
    m_e = safe_div(assign, touched)
    tile_eff = safe_div(m_e, ceil_div(m_e, me.tile_m_elems) * me.tile_m_elems)
    eff = getattr(ge, f"compute_eff_{prec}") * me.compute_eff * tile_eff
    if dtype == "fp8_block":
        eff = eff * ge.block_scale_eff
    if fmt.weight_only:
        eff = eff * ge.dequant_eff
    compute_s = safe_div(flop, hw.accel.peak_flop_per_s(dtype) * eff)
    memory_s = safe_div(bytes_, hw.accel.hbm.bw_bytes_per_s * me.mem_eff)
    time_s = smooth_max2(compute_s, memory_s, tau) + me.routing_s
    return OpCost(time_s, compute_s, memory_s, jnp.zeros_like(time_s), flop, bytes_)
