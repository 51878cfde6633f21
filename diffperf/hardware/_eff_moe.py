"""MoE layer efficiency parameters: the physical numbers behind ``ops.moe_layer_cost``."""

import equinox as eqx

from .._numerics import as_float_array
from .._types import FloatScalarLike


class MoEEfficiency(eqx.Module):
    """Grouped-GEMM, routing and load-imbalance parameters of a fused MoE layer.

    **Fields** (all float leaves, SI units):
    - ``compute_eff``: fraction of the format's dense peak that grouped expert GEMMs reach
      with full row tiles (its own kernels: not a multiple of ``eff.gemm``'s dense-GEMM
      fractions, which measured MoE layers exceed on B200).
    - ``mem_eff``: fraction of HBM bandwidth reached when streaming large expert weights.
    - ``weight_half_bytes``: weight bytes of one expert (``g·H·I_r·w``) at which its stream
      reaches half of ``mem_eff`` (small, high-TP experts stream slower); 0 = no ramp.
    - ``act_mem_eff``: fraction of HBM bandwidth reached by the activation kernels (expand,
      activation, finalize: gathers and scatters of token rows) and the routing passes.
    - ``routing_s``: fixed cost of the router top-k, permute and finalize kernels.
    - ``permute_passes``: HBM passes over the bf16 ``tokens × hidden`` rows in routing and
      finalize (scales with tokens, not assignments).
    - ``tile_m_elems``: row tile of the grouped GEMM (small-m MoE kernels use a small row
      tile or swap A/B); rows per expert are padded to it.
    - ``wo_tile_m_elems``: row tile of the weight-only (mixed-input) grouped GEMM.
    - ``wo_tile_m_large_elems``: the weight-only grouped GEMM's row tile once the rows per
      expert exceed ``wo_tile_m_elems`` (H100's kernel switches from 32- to 128-row tiles;
      equal to ``wo_tile_m_elems`` where the kernel keeps one tile).
    - ``imbalance``: load factor (>= 1) of the busiest of many ranks under balanced routing
      (``1 + (imbalance − 1)(1 − 1/ep)`` for ``ep`` ranks: exactly 1 on a single rank).
    - ``skew_load_exponent``: skewed routing loads the busiest rank by ``λ_skew ** exponent``,
      ``λ_skew`` the expected busiest-rank share of power-law expert loads
      (``ops._moe.busiest_rank_load``); 1 = exactly that workload.
    - ``assign_s``: time per routed (token, expert) assignment, all ``T·k`` of them, in the
      top-k / sort / scatter kernels (s).
    - ``wo_compute_eff``: fraction of the bf16 MoE compute efficiency that weight-only
      (``w4a16_*``, ``int8_wo``) grouped GEMMs keep (dequantisation in the main loop).
    - ``wo_fixed_s``: extra fixed time of the weight-only MoE kernel path (s).
    - ``wo_fixed_tokens_half``: tokens at which that extra time reaches half of
      ``wo_fixed_s`` (``T/(T + wo_fixed_tokens_half)``: the path's extra kernels grow in
      with the tokens); 0 = the whole ``wo_fixed_s`` from one token.
    - ``block_compute_eff``: fraction of the MoE compute rate that block-scaled
      (``fp8_block``) grouped GEMMs keep (per-block scale promotion in the main loop; the
      grouped kernels' own figure, not the dense ``eff.gemm.block_scale_eff``).
    - ``block_expert_s``: fixed time per expert held on the rank in the block-scaled MoE
      path (s), paid for every local expert whether or not tokens reach it.
    - ``block_act_passes``: extra HBM passes over the bf16 assignment rows (``A·H·2`` bytes
      each, at ``act_mem_eff``) in the block-scaled MoE path (1×128 quantisation of the
      expanded rows and the layout of their scales).
    - ``wo_assign_s``: extra time per assignment on the weight-only path (s).
    - ``k_half_elems``: reduction length at which the grouped GEMMs reach half of their
      rate, ``k/(k + k_half_elems)`` (``k``: the gate/up GEMM's ``H``, the down GEMM's
      ``I/tp``); the grouped kernels' own value, not the dense GEMMs'
      ``eff.gemm.k_half_elems`` (0 = no short-reduction penalty: hopper and blackwell, whose
      MoE layers show none).
    """

    compute_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    mem_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    routing_s: FloatScalarLike = eqx.field(converter=as_float_array)
    permute_passes: FloatScalarLike = eqx.field(converter=as_float_array)
    tile_m_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    imbalance: FloatScalarLike = eqx.field(converter=as_float_array)
    skew_load_exponent: FloatScalarLike = eqx.field(converter=as_float_array)
    assign_s: FloatScalarLike = eqx.field(converter=as_float_array)
    wo_compute_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    wo_fixed_s: FloatScalarLike = eqx.field(converter=as_float_array)
    wo_assign_s: FloatScalarLike = eqx.field(converter=as_float_array)
    weight_half_bytes: FloatScalarLike = eqx.field(converter=as_float_array)
    act_mem_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    wo_tile_m_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    wo_tile_m_large_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    block_compute_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    block_expert_s: FloatScalarLike = eqx.field(converter=as_float_array)
    block_act_passes: FloatScalarLike = eqx.field(converter=as_float_array)
    k_half_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    wo_fixed_tokens_half: FloatScalarLike = eqx.field(converter=as_float_array)
