"""GEMM efficiency parameters (first cut; refined by the GEMM model owner)."""

import equinox as eqx

from .._numerics import as_float_array
from .._types import FloatScalarLike


class GemmEfficiency(eqx.Module):
    """Achieved fractions and shape knobs of dense GEMMs on one device.

    **Fields** (all float leaves):
    - ``compute_eff_bf16`` .. ``compute_eff_fp4``: fraction of dense peak reached by large,
      well-shaped GEMMs of that precision.
    - ``mem_eff``: fraction of HBM bandwidth reached by memory-bound (small-m) GEMMs.
    - ``tile_m_elems``, ``tile_n_elems``: output tile of the kernel (tile quantisation).
    - ``num_tile_slots``: tiles that run concurrently (SM count × tiles per SM; waves).
    - ``k_half_elems``: reduction length at which the main loop is half efficient.
    - ``launch_s``: fixed per-kernel overhead.
    """

    compute_eff_bf16: FloatScalarLike = eqx.field(converter=as_float_array)
    compute_eff_fp8: FloatScalarLike = eqx.field(converter=as_float_array)
    compute_eff_fp4: FloatScalarLike = eqx.field(converter=as_float_array)
    compute_eff_int8: FloatScalarLike = eqx.field(converter=as_float_array)
    compute_eff_fp32: FloatScalarLike = eqx.field(converter=as_float_array)
    mem_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    tile_m_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    tile_n_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    num_tile_slots: FloatScalarLike = eqx.field(converter=as_float_array)
    k_half_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    launch_s: FloatScalarLike = eqx.field(converter=as_float_array)
