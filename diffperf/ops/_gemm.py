"""Dense GEMM cost on one device: a shape-aware roofline.

``t = smooth_max(flop / (peak · η_c), bytes / (bw · η_m)) + t_quant + launch + t_pad`` with

- ``flop = 2 m n k``; ``bytes = m k a + k n w + m n o`` (activation, weight and output bytes
  per element of the formats, scales included, see ``_dtypes.py``);
- ``η_c = eff_prec · [block_scale_eff · unaligned] · [dequant_eff] · η_tile · η_wave · η_k``:
  ``η_tile = m n / (⌈m/T_m⌉ T_m ⌈n/T_n⌉ T_n)`` (padding of the last tile row/column),
  ``η_wave = u / (W S)`` for ``u = tiles · s`` work units over ``S`` tile slots, with
  ``W = max(1, u/S + c (⌈u/S⌉ − u/S))`` waves (``c = wave_tail_share``: 1 when a partial
  last wave takes a whole wave's time, 0 when stream-k spreads it over every slot;
  ``c = scaled_wave_tail_share`` for the block-scaled fp8_block and fp4 kernels), where a
  GEMM with fewer tiles than slots splits k into ``s = clip(⌊S/tiles⌋, 1, ⌈k/K_split⌉)``
  parts (fp4 kernels never split), and ``η_k = k_s / (k_s + K_half)`` for the per-unit
  reduction length ``k_s = k/s``; ``unaligned = unaligned_m_eff`` for an ``fp8_block`` GEMM
  whose ``m`` is above half a row tile and leaves at least half a padding row in its last
  tile (``⌈m/T_m⌉T_m − m ≥ 1/2``: the kernels' slower path for unaligned rows), else 1;
- ``t_pad = ⌈tiles/S⌉ · (⌈m/T_m⌉T_m − m) · k · unaligned_row_k_s`` on that same path: the
  part of its cost that grows with the padding rows (measured on H100: linear in the padding,
  in k and in the waves);
- ``η_m = mem_eff · bytes / (bytes + B_half)`` (small transfers do not reach full bandwidth);
- ``t_quant = passes · m k (2 + a) / (bw · η_m) + quant_launch_s``: a separate
  activation-quantisation pass for per-tensor-scaled formats whose activation quantisation is
  its own kernel (fp8, int8; ``SEPARATE_ACT_QUANT``; ``passes = act_quant_passes``), and the
  same without the launch term for per-group-scaled formats (fp8_block, fp4 formats;
  ``GROUP_ACT_QUANT``; ``passes = group_quant_passes``, 0 = fused into the producer);
- block-scaled formats: ``compute ≥ ⌈⌈n/T_n⌉/S⌉ · k · pace`` (``block_tile_k_s`` for
  fp8_block, ``fp4_tile_k_s`` for fp4): these kernels do not split k, so each column of
  output tiles walks the whole reduction, and at small m they do so at a fixed pace
  per element (B200 nvfp4 at m = 1: 5.8 us + 1.9 ns · k over k = 2048 .. 16384, for any n up
  to one wave of columns), slower than a full tile's compute-bound pace at large m;
- ``launch``: ``launch_s``, plus ``scaled_launch_s`` for fp8_block and ``fp4_launch_s`` for
  fp4 formats (0 in the hand-fitted profiles; calibration fits them).

All ceilings/floors are straight-through: exact forward values, finite identity-slope
gradients. A precision without native support runs on the next wider one
(:meth:`Accelerator.compute_precision`); weight-only formats (``int8_wo``, ``w4a16_*``)
compute in bf16 but read fewer weight bytes.
"""

import jax.numpy as jnp
from jax import lax

from .._dtypes import activation_bytes, get_format
from .._numerics import ceil_div, safe_div, saturating, smooth_max2, ste_ceil
from ..hardware import Hardware
from ._cost import OpCost


# Formats whose activation quantisation runs as its own kernel before the GEMM (a per-tensor
# scale needs the whole tensor's amax). Per-group formats are below; bf16 and weight-only
# formats keep bf16 activations.
SEPARATE_ACT_QUANT = frozenset({"fp8", "int8"})
# Formats whose activations are quantised per group (1x128 fp8 groups, 1x16 / 1x32 fp4
# blocks with their scales): one read of the bf16 activations and one write of the quantised
# copy, ``group_quant_passes`` times, in a kernel of its own (0 = fused into the producer).
GROUP_ACT_QUANT = frozenset({"fp8_block", "fp4", "nvfp4", "mxfp4"})


def _ste_floor(x):
    x = jnp.asarray(x, dtype=float)
    return x + lax.stop_gradient(jnp.floor(x) - x)


def gemm_compute_eff(hw: Hardware, m, n, k, dtype: str):
    """Shape-dependent compute efficiency ``η_c`` (fraction of dense peak) of a GEMM.

    **Arguments:** ``hw``; ``m, n, k`` (elements, float leaves, broadcastable); ``dtype``
    (static format name).

    **Returns:** ``η_c`` in (0, 1], broadcast shape of ``m, n, k``.
    """
    e = hw.accel.eff.gemm
    fmt = get_format(dtype)
    prec = hw.accel.compute_precision(dtype)
    m = jnp.asarray(m, dtype=float)
    n = jnp.asarray(n, dtype=float)
    k = jnp.asarray(k, dtype=float)
    tm = ceil_div(m, e.tile_m_elems)
    tn = ceil_div(n, e.tile_n_elems)
    tiles = tm * tn
    tile_eff = safe_div(m * n, tiles * e.tile_m_elems * e.tile_n_elems)
    # split-k when the output tiles alone cannot fill the slots
    max_split = ceil_div(k, e.split_k_elems)
    if prec == "fp4":
        # block-scaled fp4 kernels (CUTLASS/TRT-LLM nvfp4) have no split-k: few tiles each
        # stream the whole k, which is what makes small-m fp4 GEMMs slow at long k.
        max_split = jnp.ones_like(max_split)
    split = jnp.clip(
        _ste_floor(safe_div(e.num_tile_slots, tiles)), 1.0, jnp.maximum(max_split, 1.0)
    )
    units = tiles * split
    # the last, partial wave costs a share ``wave_tail_share`` of a whole wave beyond its own
    # work: 1 = data-parallel tiles (a partial wave takes as long as a full one), 0 = stream-k
    # (the tail's work is spread over every slot); at least one wave. Block-scaled kernels
    # (fp8_block, fp4) have their own share (H100 fits 1: whole tiles; B200 ~0.6).
    exact_waves = safe_div(units, e.num_tile_slots)
    scaled = dtype == "fp8_block" or prec == "fp4"
    tail = e.scaled_wave_tail_share if scaled else e.wave_tail_share
    waves = exact_waves + tail * (ste_ceil(exact_waves) - exact_waves)
    waves = jnp.maximum(waves, 1.0)
    wave_eff = safe_div(units, waves * e.num_tile_slots)
    k_eff = saturating(safe_div(k, split), e.k_half_elems)
    eff = getattr(e, f"compute_eff_{prec}") * tile_eff * wave_eff * k_eff
    if dtype == "fp8_block":
        unaligned = _padding_rows(e, m)[1]
        eff = eff * e.block_scale_eff * jnp.where(unaligned, e.unaligned_m_eff, 1.0)
    if fmt.weight_only:
        eff = eff * e.dequant_eff
    return eff


def _padding_rows(e, m):
    """``(pad, unaligned)``: padding rows ``⌈m/T_m⌉T_m − m`` of the last row tile, and whether
    fp8_block takes its slower path (m above half a row tile, at least half a padding row: a
    relaxed, fractional m counts as aligned within half a row)."""
    pad = ceil_div(m, e.tile_m_elems) * e.tile_m_elems - m
    return pad, (pad >= 0.5) & (m > 0.5 * e.tile_m_elems)


def gemm_unaligned_s(hw: Hardware, m, n, k, dtype: str):
    """Padding-proportional time of fp8_block's unaligned-row path (s):
    ``waves · pad · k · unaligned_row_k_s`` with ``pad = ⌈m/T_m⌉T_m − m`` padding rows and
    ``waves = ⌈tiles/S⌉`` whole waves of output tiles (these kernels do not split k); 0 for
    other formats and for aligned or small ``m`` (see :func:`gemm_compute_eff`). Like every
    ceiling here the padding is straight-through: its slope in ``m`` is 0 (its average over a
    tile does not change with ``m``); the waves keep their identity slope."""
    m = jnp.asarray(m, dtype=float)
    if dtype != "fp8_block":
        return jnp.zeros(jnp.broadcast_shapes(m.shape, jnp.shape(n), jnp.shape(k)))
    e = hw.accel.eff.gemm
    pad, unaligned = _padding_rows(e, m)
    tiles = ceil_div(m, e.tile_m_elems) * ceil_div(n, e.tile_n_elems)
    waves = ste_ceil(safe_div(tiles, e.num_tile_slots))
    return jnp.where(unaligned, waves * pad * k * e.unaligned_row_k_s, 0.0)


def gemm_mem_eff(hw: Hardware, bytes_):
    """Achieved fraction of HBM bandwidth for a transfer of ``bytes_``: ``mem_eff·b/(b+B½)``."""
    e = hw.accel.eff.gemm
    return e.mem_eff * saturating(bytes_, e.mem_half_bytes)


def gemm_bytes(m, n, k, dtype: str, out_dtype: str = "bf16"):
    """HBM bytes of one GEMM: activations ``m·k``, weights ``k·n``, output ``m·n``."""
    fmt = get_format(dtype)
    out = get_format(out_dtype, "out_dtype")
    return (
        m * k * activation_bytes(dtype)
        + k * n * fmt.bytes_per_element
        + m * n * out.bytes_per_element
    )


def gemm_cost(
    hw: Hardware, m, n, k, dtype: str, tau: float = 0.0, out_dtype: str = "bf16"
) -> OpCost:
    """Time of ``C[m,n] = A[m,k] @ B[k,n]`` in format ``dtype`` on one device.

    See the module docstring for the formula. ``tau`` is the smooth-max temperature
    (0 = exact roofline max; the bias is at most a factor ``2**tau``).

    **Arguments:**
    - ``hw``: the :class:`Hardware` (peaks, HBM bandwidth, ``eff.gemm``).
    - ``m, n, k``: GEMM dimensions in elements (float leaves, broadcastable).
    - ``dtype``: static format name (``bf16``, ``fp8``, ``fp8_block``, ``nvfp4``,
      ``int8``, ``int8_wo``, ``w4a16_mxfp4``, ...).
    - ``out_dtype``: static format of the output ``C``.

    **Returns:** an :class:`OpCost` (``time_s``, both roofline legs, FLOP and bytes).
    """
    e = hw.accel.eff.gemm
    get_format(dtype)  # validates the name (clear error for an unknown format)
    m = jnp.asarray(m, dtype=float)
    n = jnp.asarray(n, dtype=float)
    k = jnp.asarray(k, dtype=float)
    bw = hw.accel.hbm.bw_bytes_per_s
    flop = 2.0 * m * n * k
    bytes_ = gemm_bytes(m, n, k, dtype, out_dtype)
    compute_s = safe_div(
        flop, hw.accel.peak_flop_per_s(dtype) * gemm_compute_eff(hw, m, n, k, dtype)
    )
    if dtype == "fp8_block":
        pace = e.block_tile_k_s
    elif hw.accel.compute_precision(dtype) == "fp4":
        pace = e.fp4_tile_k_s
    else:
        pace = None
    if pace is not None:
        # block-scaled kernels do not split k: every output-tile column walks the whole k,
        # at least ``pace`` per element (the small-m kernels' pace), once per wave of columns
        cols = ceil_div(n, e.tile_n_elems)
        col_waves = ste_ceil(safe_div(cols, e.num_tile_slots))
        compute_s = jnp.maximum(compute_s, col_waves * k * pace)
    memory_s = safe_div(bytes_, bw * gemm_mem_eff(hw, bytes_))
    t = smooth_max2(compute_s, memory_s, tau) + gemm_fixed_s(hw, dtype)
    t = t + gemm_unaligned_s(hw, m, n, k, dtype)  # 0 outside fp8_block
    if dtype in SEPARATE_ACT_QUANT or dtype in GROUP_ACT_QUANT:
        passes = e.act_quant_passes if dtype in SEPARATE_ACT_QUANT else e.group_quant_passes
        qbytes = m * k * (2.0 + activation_bytes(dtype))
        t = t + passes * safe_div(qbytes, bw * gemm_mem_eff(hw, qbytes))
    return OpCost(t, compute_s, memory_s, jnp.zeros_like(t), flop, bytes_)


def gemm_fixed_s(hw: Hardware, dtype: str):
    """Fixed time of one GEMM of format ``dtype`` (s): ``launch_s``, plus ``scaled_launch_s``
    for fp8_block (software block-scaled kernels load and apply per-block scales in their
    prologue/epilogue), ``fp4_launch_s`` for fp4 formats (hardware block scales) and
    ``quant_launch_s`` for the separate activation-quantisation kernels of per-tensor formats.
    """
    e = hw.accel.eff.gemm
    t = e.launch_s
    if dtype == "fp8_block":
        t = t + e.scaled_launch_s
    if get_format(dtype).compute == "fp4":
        t = t + e.fp4_launch_s
    if dtype in SEPARATE_ACT_QUANT:
        t = t + e.quant_launch_s
    return t


def gemm_costs(
    hw: Hardware,
    shapes,
    dtype: str,
    tau: float = 0.0,
    out_dtype: str = "bf16",
    weights=None,
) -> OpCost:
    """Summed cost of several GEMMs of one format, evaluated as ONE broadcast :func:`gemm_cost`.

    The same numbers as adding the :func:`gemm_cost` of each ``(m, n, k)`` in ``shapes``
    (each scaled by its entry of ``weights``, default 1), but the shapes travel along a new
    last axis, so a traced model carries one copy of the GEMM law instead of one per
    projection. That keeps the programs XLA compiles for gradient searches small.

    **Arguments:** ``hw``; ``shapes``: a sequence of ``(m, n, k)`` (float leaves, mutually
    broadcastable); ``dtype``/``out_dtype``/``tau`` as in :func:`gemm_cost`; ``weights``:
    optional per-GEMM multipliers (e.g. 0/1 gates).

    **Returns:** an :class:`OpCost` of the broadcast shape of the inputs.
    """
    dims = [jnp.asarray(x, dtype=float) for s in shapes for x in s]
    if weights is not None:
        dims += [jnp.asarray(x, dtype=float) for x in weights]
    dims = jnp.broadcast_arrays(*dims)
    g = len(shapes)
    m, n, k = (jnp.stack(dims[i : 3 * g : 3], axis=-1) for i in range(3))
    c = gemm_cost(hw, m, n, k, dtype, tau, out_dtype)
    if weights is not None:
        c = c.scale(jnp.stack(dims[3 * g :], axis=-1))
    legs = (c.time_s, c.compute_s, c.memory_s, c.comm_s, c.flop, c.bytes)
    return OpCost(*(jnp.sum(x, axis=-1) for x in legs))
