"""Attention efficiency parameters (first cut; refined by the attention model owner)."""

import equinox as eqx

from .._numerics import as_float_array
from .._types import FloatScalarLike


class AttentionEfficiency(eqx.Module):
    """Achieved fractions of fused attention kernels (FlashAttention-style, MLA, DSA).

    **Fields** (all float leaves):
    - ``prefill_compute_eff``: fraction of dense peak reached by long causal prefill.
    - ``decode_mem_eff``: fraction of HBM bandwidth reached by decode at large batch.
    - ``decode_batch_half``: KV bytes (per kernel) at which decode reaches half its bandwidth.
    - ``launch_s``: fixed per-kernel overhead.
    """

    prefill_compute_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    decode_mem_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    decode_bytes_half: FloatScalarLike = eqx.field(converter=as_float_array)
    launch_s: FloatScalarLike = eqx.field(converter=as_float_array)
