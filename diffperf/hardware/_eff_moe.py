"""MoE layer efficiency parameters (first cut; refined by the MoE model owner)."""

import equinox as eqx

from .._numerics import as_float_array
from .._types import FloatScalarLike


class MoEEfficiency(eqx.Module):
    """Grouped-GEMM and routing overheads of a fused MoE layer.

    **Fields** (all float leaves):
    - ``compute_eff``: fraction of the GEMM compute efficiency kept by grouped GEMMs.
    - ``mem_eff``: fraction of HBM bandwidth reached when streaming expert weights.
    - ``routing_s``: fixed cost of top-k routing, permutation and finalize kernels.
    - ``imbalance``: load-imbalance factor (>= 1) on the busiest expert for balanced routing.
    """

    compute_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    mem_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    routing_s: FloatScalarLike = eqx.field(converter=as_float_array)
    imbalance: FloatScalarLike = eqx.field(converter=as_float_array)
