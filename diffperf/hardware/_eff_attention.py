"""Attention efficiency parameters (fused FlashAttention-style, MLA and DSA kernels).

Fitted per architecture profile in ``hardware_presets/efficiency/attention.toml`` (the data and
method are recorded there); the equations that use them are in ``diffperf/ops/_attention.py``.
"""

import equinox as eqx

from .._numerics import as_float_array
from .._types import FloatScalarLike


def _leaf():
    return eqx.field(converter=as_float_array)


class AttentionEfficiency(eqx.Module):
    """Physical parameters of fused attention kernels on one device (all float leaves).

    Prefill (causal FlashAttention):
    - ``prefill_eff_bf16``, ``prefill_eff_fp8``: fraction of the dense tensor-core peak of
      that precision reached by the QK^T/PV work of long sequences.
    - ``prefill_row_keys``: per-query-row overhead (load Q, softmax epilogue, write O) in
      units of "equivalent attended keys": a row attending ``L`` keys costs ``L + row_keys``.
    - ``prefill_seq_head_s``: device-seconds per (sequence, query head) work unit (CTA
      scheduling, pipeline fill), seen as the cost of 1-token prefill at large batch.
    - ``prefill_tiles_half``: parallel work units (128-query-row tiles × heads × sequences)
      at which the device is half occupied: ``η ← η · U / (U + U_half)`` (SM fill).
    Decode (one query token per sequence, KV-cache streaming):
    - ``decode_mem_eff``: fraction of HBM bandwidth reached by large KV reads.
    - ``decode_bytes_half``: KV bytes per kernel at which the achieved bandwidth is half of
      the large-transfer value (``eta = eff * B / (B + B_half)``).
    - ``decode_compute_eff``: fraction of the dense peak reached by decode's QK/PV math.
    - ``decode_cta_s_bf16kv``, ``decode_cta_s_fp8kv``: device-seconds per (sequence, KV head)
      work unit for a 16-bit / 8-bit KV cache (the fp8 kernels differ).
    - ``decode_cta_s_bf16kv_mha``: the same for a 16-bit KV cache when every KV head serves one
      query head (MHA, ``num_heads == num_kv_heads``), which runs another kernel: on H100 a
      (sequence, KV head) unit of Llama-style MHA costs 10.6 ns at 64 heads, a GQA unit
      36-41 ns at 4-8 query heads per KV head. Equal to ``decode_cta_s_bf16kv`` in the hand
      profiles (no distinction); calibration fits it.
    - ``overlap_p``: exponent of the p-norm that combines the compute and memory legs
      (``p -> inf`` is perfect overlap = max, ``p = 1`` is no overlap = sum).
    - ``prefill_launch_s``, ``decode_launch_s_bf16kv``, ``decode_launch_s_fp8kv``,
      ``mla_launch_s``: fixed per-kernel time (launch + prologue/epilogue, under CUDA graphs)
      of the prefill, 16-bit-KV decode, 8-bit-KV decode and MLA kernels.
    MLA (DeepSeek-V2/V3):
    - ``mla_prefill_eff_scale``: multiplier of the prefill efficiency for the non-absorbed
      MLA context kernel (head dims 192/128 instead of 128/128).
    - ``mla_prefill_extra_launch_s``: extra fixed time of the MLA context (prefill) kernels
      over ``mla_launch_s`` / ``mla_launch_s_fp8kv``, which the decode kernels pay alone: B200
      one-token prefill takes 14.9 us (16-bit KV) / 17.2 us (fp8), decode 8.7 us. 0 in the
      hand profiles (one shared launch); calibration fits it.
    - ``mla_launch_s_fp8kv``, ``mla_prefill_eff_scale_fp8kv``: the same two for MLA kernels
      with an 8-bit KV cache (TensorRT-LLM's fp8 MLA quantises Q/K/V and runs other
      kernels); the hand-fitted profiles set them equal to the 16-bit values.
    - ``mla_decode_eff_bf16``, ``mla_decode_eff_fp8``: fraction of the dense peak reached by
      the absorbed MLA decode kernel (math precision = KV-cache precision).
    - ``mla_decode_mem_eff``: fraction of HBM bandwidth the MLA decode kernel reaches on
      large latent-cache reads (its own kernels; the ``decode_bytes_half`` ramp is shared).
    - ``mla_decode_seq_s``, ``mla_decode_head_s``: device-seconds per sequence and per
      (sequence, head) of the MLA decode kernel.
    - ``mla_module_fixed_s``: fixed time of the small kernels of an MLA block (RMSNorms, RoPE,
      quantisation, KV-cache append) beyond its GEMMs and attention kernel.
    - ``mla_module_token_s``: their per-token, per-head time (device-seconds).
    - ``mla_module_row_s``: their per-token time independent of the heads (RMSNorms of the
      q/kv latents, k RoPE, quantisation, cache append; device-seconds).
    - ``mla_module_launch_overlap``: fraction in [0, 1] of the block's GEMM and attention
      kernels' standalone fixed times (launch, prologue, tail, as a single-kernel timing
      measures them) that is hidden when the block's kernels run back to back in one CUDA
      graph. 0 = each kernel pays its full fixed time.
    """

    prefill_eff_bf16: FloatScalarLike = _leaf()
    prefill_eff_fp8: FloatScalarLike = _leaf()
    prefill_row_keys: FloatScalarLike = _leaf()
    prefill_seq_head_s: FloatScalarLike = _leaf()
    prefill_tiles_half: FloatScalarLike = _leaf()
    decode_mem_eff: FloatScalarLike = _leaf()
    decode_bytes_half: FloatScalarLike = _leaf()
    decode_compute_eff: FloatScalarLike = _leaf()
    decode_cta_s_bf16kv: FloatScalarLike = _leaf()
    decode_cta_s_bf16kv_mha: FloatScalarLike = _leaf()
    decode_cta_s_fp8kv: FloatScalarLike = _leaf()
    overlap_p: FloatScalarLike = _leaf()
    prefill_launch_s: FloatScalarLike = _leaf()
    decode_launch_s_bf16kv: FloatScalarLike = _leaf()
    decode_launch_s_fp8kv: FloatScalarLike = _leaf()
    mla_launch_s: FloatScalarLike = _leaf()
    mla_prefill_extra_launch_s: FloatScalarLike = _leaf()
    mla_prefill_eff_scale: FloatScalarLike = _leaf()
    mla_launch_s_fp8kv: FloatScalarLike = _leaf()
    mla_prefill_eff_scale_fp8kv: FloatScalarLike = _leaf()
    mla_decode_eff_bf16: FloatScalarLike = _leaf()
    mla_decode_eff_fp8: FloatScalarLike = _leaf()
    mla_decode_seq_s: FloatScalarLike = _leaf()
    mla_decode_head_s: FloatScalarLike = _leaf()
    mla_module_fixed_s: FloatScalarLike = _leaf()
    mla_module_token_s: FloatScalarLike = _leaf()
    mla_decode_mem_eff: FloatScalarLike = _leaf()
    mla_module_row_s: FloatScalarLike = _leaf()
    mla_module_launch_overlap: FloatScalarLike = _leaf()
