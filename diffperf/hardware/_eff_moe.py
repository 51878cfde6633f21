"""MoE layer efficiency parameters: the physical numbers behind ``ops.moe_layer_cost``."""

import equinox as eqx

from .._numerics import as_float_array
from .._types import FloatScalarLike


class MoEEfficiency(eqx.Module):
    """Grouped-GEMM, routing and load-imbalance parameters of a fused MoE layer.

    **Fields** (all float leaves, SI units):
    - ``compute_eff``: fraction of the dense-GEMM compute efficiency (``eff.gemm``'s
      per-precision value and tile quantisation) that grouped expert GEMMs keep.
    - ``mem_eff``: fraction of HBM bandwidth reached when streaming expert weights.
    - ``routing_s``: fixed cost of the router top-k, permute and finalize kernels.
    - ``permute_passes``: HBM passes over the bf16 ``tokens × hidden`` rows in routing and
      finalize (scales with tokens, not assignments).
    - ``tile_m_elems``: row tile of the grouped GEMM (small-m MoE kernels use a small row
      tile or swap A/B); rows per expert are padded to it.
    - ``imbalance``: load factor (>= 1) of the busiest rank under balanced routing.
    - ``skew_ep_exponent``: skewed routing loads rank 0 by ``ep ** (exponent · skew)``
      (the share of a power-law-routed load held by the busiest of ``ep`` ranks).
    - ``assign_s``: time per routed (token, expert) assignment, all ``T·k`` of them, in the
      top-k / sort / scatter kernels (s).
    - ``wo_compute_eff``: fraction of the bf16 MoE compute efficiency that weight-only
      (``w4a16_*``, ``int8_wo``) grouped GEMMs keep (dequantisation in the main loop).
    - ``wo_fixed_s``: extra fixed time of the weight-only MoE kernel path (s).
    - ``wo_assign_s``: extra time per assignment on the weight-only path (s).
    """

    compute_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    mem_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    routing_s: FloatScalarLike = eqx.field(converter=as_float_array)
    permute_passes: FloatScalarLike = eqx.field(converter=as_float_array)
    tile_m_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    imbalance: FloatScalarLike = eqx.field(converter=as_float_array)
    skew_ep_exponent: FloatScalarLike = eqx.field(converter=as_float_array)
    assign_s: FloatScalarLike = eqx.field(converter=as_float_array)
    wo_compute_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    wo_fixed_s: FloatScalarLike = eqx.field(converter=as_float_array)
    wo_assign_s: FloatScalarLike = eqx.field(converter=as_float_array)
