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
    - ``permute_passes``: HBM passes over the ``tokens × hidden`` activations spent in
      routing, permutation and un-permutation (scales with tokens, not assignments).
    - ``tile_m_elems``: row tile of the grouped GEMM (small-m MoE kernels use a small row
      tile or swap A/B); rows per expert are padded to it.
    - ``imbalance``: load factor (>= 1) of the busiest rank under balanced routing.
    - ``skew_ep_exponent``: skewed routing loads rank 0 by ``ep ** (exponent · skew)``
      (the share of a power-law-routed load held by the busiest of ``ep`` ranks).
    """

    compute_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    mem_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    routing_s: FloatScalarLike = eqx.field(converter=as_float_array)
    permute_passes: FloatScalarLike = eqx.field(converter=as_float_array)
    tile_m_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    imbalance: FloatScalarLike = eqx.field(converter=as_float_array)
    skew_ep_exponent: FloatScalarLike = eqx.field(converter=as_float_array)
