"""GEMM efficiency parameters: the handful of physical numbers behind ``ops.gemm_cost``."""

import equinox as eqx

from .._numerics import as_float_array
from .._types import FloatScalarLike


class GemmEfficiency(eqx.Module):
    """Achieved fractions and shape knobs of dense GEMMs on one device.

    **Fields** (all float leaves, SI units):
    - ``compute_eff_bf16`` .. ``compute_eff_fp32``: fraction of the dense peak of that
      tensor-core precision reached by large, well-shaped GEMMs.
    - ``block_scale_eff``: extra factor on compute efficiency for software block-scaled
      formats (``fp8_block``: per-128 scale multiplies in the main loop).
    - ``unaligned_m_eff``: extra factor for ``fp8_block`` GEMMs whose row count is not a
      multiple of the row tile (``m mod tile_m_elems != 0``, beyond half a tile): Hopper
      block-scaled kernels take a slower path for unaligned rows (measured on H100, 1536 x
      7168: m = 129 takes 2.1x the time of m = 256). 1 = no such path.
    - ``unaligned_row_k_s``: time of that slower path that grows with the padding: seconds per
      padding row of the last row tile, per reduction element, per wave of tiles
      (``fp8_block`` only, same condition as ``unaligned_m_eff``). H100 DeepGEMM-style kernels
      pay ~22 ps per row per k: 1536 x 7168 at m = 129 (127 padding rows, one wave) takes
      38.9 us, at m = 256 (aligned) 18.3 us; the excess falls linearly with the padding and
      is k times a constant over k = 2048 .. 16384, times the waves (51200 x 5120: 7 waves,
      ~7x). 0 = no such cost.
    - ``dequant_eff``: extra factor for weight-only formats (``int8_wo``, ``w4a16_*``), whose
      weights are dequantised to bf16 in registers before the MMA.
    - ``mem_eff``: fraction of HBM bandwidth reached by large memory-bound transfers.
    - ``mem_half_bytes``: bytes moved at which the achieved bandwidth is half of that
      (pipeline fill / too few CTAs in flight for small transfers).
    - ``tile_m_elems``, ``tile_n_elems``: output tile of the kernel (tile quantisation).
    - ``num_tile_slots``: tiles (or split-k work units) in flight at once: SMs × CTAs/SM.
    - ``wave_tail_share``: share of a whole wave's time that the last, partial wave of work
      units costs beyond its own work, in [0, 1]: 1 = data-parallel tiles (a partial wave
      takes as long as a full one), 0 = stream-k (the tail is spread evenly over every
      slot). Libraries choose between the two per shape; calibration fits the blend. Not
      used by block-scaled kernels (``fp8_block``, fp4), which have their own:
    - ``scaled_wave_tail_share``: the same share for ``fp8_block`` and fp4 kernels, in
      [0, 1]. The hand profiles keep 1 (whole tiles); fitted, H100 fp8_block stays at 1.00
      (its times step at whole waves: 1536 x 7168 takes 47.5 us at 120 tiles, 65.8 us at 144
      on 132 SMs) while B200 fits ~0.6.
    - ``split_k_elems``: reduction length per work unit when a GEMM has too few output
      tiles to fill the slots (split-k / stream-k).
    - ``k_half_elems``: reduction length at which the main loop reaches half its rate
      (prologue + epilogue amortisation).
    - ``act_quant_passes``: separate memory passes over the activations (read bf16, write the
      quantised copy) for per-tensor-scaled formats (fp8, int8: an amax pass, then the
      scaling pass); 0 when quantisation is fused into the previous kernel.
    - ``group_quant_passes``: the same for formats that quantise activations per group
      (``fp8_block`` 1x128, ``nvfp4``/``mxfp4`` blocks): memory passes of their separate
      quantisation kernel (read bf16, write the quantised copy and its scales); 0 = fused.
    - ``fp4_tile_k_s``: floor on fp4 GEMMs' compute time per reduction element, per wave of
      output-tile columns (``⌈⌈n/tile_n⌉/slots⌉ · k · fp4_tile_k_s``): fp4 kernels have no
      split-k, and at small m they walk k at this pace (B200 nvfp4: ~1.9 ns per element, so
      m = 1 takes 5.8 us + 1.9 ns · k for every n up to one wave of columns). 0 = no floor.
    - ``block_tile_k_s``: the same floor for ``fp8_block`` kernels (DeepGEMM-style: no split-k
      either; H100 1.28 ns, B200 0.96 ns fitted). It is what makes the narrow long-k
      1536 x 7168 GEMM take 13.1 us at m = 1 on H100, more than 4096 x 4096 (11.7 us).
    - ``launch_s``: fixed per-kernel overhead (launch, setup, tail).
    - ``scaled_launch_s``: extra fixed time of software block-scaled fp8 kernels
      (``fp8_block``): loading and applying the scale factors in the prologue/epilogue.
    - ``fp4_launch_s``: extra fixed time of fp4 kernels (``nvfp4``, ``mxfp4``).
    - ``quant_launch_s``: fixed time of the separate activation-quantisation kernels of
      per-tensor formats (``fp8``, ``int8``: an amax reduction, then the scaling pass), paid
      once per GEMM on top of their memory time.
    """

    compute_eff_bf16: FloatScalarLike = eqx.field(converter=as_float_array)
    compute_eff_fp8: FloatScalarLike = eqx.field(converter=as_float_array)
    compute_eff_fp4: FloatScalarLike = eqx.field(converter=as_float_array)
    compute_eff_int8: FloatScalarLike = eqx.field(converter=as_float_array)
    compute_eff_fp32: FloatScalarLike = eqx.field(converter=as_float_array)
    block_scale_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    unaligned_m_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    unaligned_row_k_s: FloatScalarLike = eqx.field(converter=as_float_array)
    dequant_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    mem_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    mem_half_bytes: FloatScalarLike = eqx.field(converter=as_float_array)
    tile_m_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    tile_n_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    num_tile_slots: FloatScalarLike = eqx.field(converter=as_float_array)
    wave_tail_share: FloatScalarLike = eqx.field(converter=as_float_array)
    scaled_wave_tail_share: FloatScalarLike = eqx.field(converter=as_float_array)
    split_k_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    k_half_elems: FloatScalarLike = eqx.field(converter=as_float_array)
    act_quant_passes: FloatScalarLike = eqx.field(converter=as_float_array)
    group_quant_passes: FloatScalarLike = eqx.field(converter=as_float_array)
    launch_s: FloatScalarLike = eqx.field(converter=as_float_array)
    scaled_launch_s: FloatScalarLike = eqx.field(converter=as_float_array)
    quant_launch_s: FloatScalarLike = eqx.field(converter=as_float_array)
    fp4_launch_s: FloatScalarLike = eqx.field(converter=as_float_array)
    fp4_tile_k_s: FloatScalarLike = eqx.field(converter=as_float_array)
    block_tile_k_s: FloatScalarLike = eqx.field(converter=as_float_array)
