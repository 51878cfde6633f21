"""Fused attention kernel costs on one device: GQA/MHA/MQA, sliding window, MLA, DSA.

All sizes are float leaves (batch, lengths, head counts, head dims), so every function here is
jit/vmap/grad-able; dtype names are static. Every function returns an :class:`OpCost`.

Shared equations (parameters: ``hw.accel.eff.attention``, see
:class:`diffperf.hardware.AttentionEfficiency`; fitted on TensorRT-LLM kernel timings, see
``hardware_presets/efficiency/attention.toml``):

- Compute leg: ``t_c = FLOP_eff / (peak · η) + units · t_unit`` where ``FLOP_eff`` counts the
  attended (query, key) pairs plus a per-query-row overhead and ``units`` are the kernel's
  parallel work units (sequence × head) that each pay a scheduling/pipeline-fill cost.
- Memory leg: ``t_m = bytes / (bw · η_m(bytes))`` with ``η_m = η_max · B / (B + B_half)``.
- Kernel time: ``t = launch + (t_c^p + t_m^p)^(1/p)``; ``p`` (``overlap_p``) is the fitted
  degree of overlap of the two legs (``p = 1``: serial, ``p → ∞``: perfect overlap). A
  ``tau > 0`` softens this further to ``p_eff = min(p, 1/tau)`` (``tau = 0``: exact form).
"""

import jax.numpy as jnp
from jax import lax

from .._dtypes import activation_bytes, get_format
from .._numerics import ceil_div, safe_div
from ..hardware import Hardware
from ..model._spec import ModelSpec
from ._cost import OpCost, sum_costs


_Q_TILE_ROWS = 128.0  # query rows per FlashAttention CTA tile (FA2/FA3, TRT-LLM FMHA)


def _f(x):
    return jnp.asarray(x, dtype=float)


def _pnorm2(a, b, p):
    """``(a^p + b^p)^(1/p)`` of non-negative ``a, b`` with finite gradients at 0 and at ties.

    Scaled by the stop-gradient max so large ``p`` cannot overflow (the same trick as
    :func:`diffperf._numerics.smooth_max_pos`); ``p`` may be a traced leaf.
    """
    a, b = _f(a), _f(b)
    m = lax.stop_gradient(jnp.maximum(a, b))
    ok = m > 0
    ms = jnp.where(ok, m, 1.0)
    ra, rb = a / ms, b / ms

    def _pow(r):
        pos = r > 0
        return jnp.where(pos, jnp.where(pos, r, 1.0) ** p, 0.0)

    s = _pow(ra) + _pow(rb)
    sok = s > 0
    return jnp.where(ok & sok, ms * jnp.where(sok, s, 1.0) ** safe_div(1.0, p), 0.0)


def _combine(compute_s, memory_s, eff, tau: float):
    p = _f(eff.overlap_p)
    if tau > 0:
        p = jnp.minimum(p, 1.0 / tau)
    return _pnorm2(compute_s, memory_s, p)


def _math_peak_and_eff(hw: Hardware, dtype: str):
    """Peak FLOP/s and fitted prefill efficiency for attention math in ``dtype`` (static)."""
    e = hw.accel.eff.attention
    prec = hw.accel.compute_precision(dtype)
    eta = e.prefill_eff_fp8 if prec in ("fp8", "fp4", "int8") else e.prefill_eff_bf16
    return hw.accel.peak_flop_per_s(dtype), _f(eta)


def attended_pairs(seq_len, prefix_len=0.0, window=0.0):
    """(query, key) pairs per sequence and head of causal attention with a cached prefix.

    New query ``i`` (0-based) sees ``c_i = prefix + i + 1`` keys, capped at ``window`` when
    ``window > 0``: ``P = Σ_{c=prefix+1}^{prefix+s} min(c, w)``. Closed form with
    ``n1 = clip(w - prefix, 0, s)`` queries below the cap:
    ``P = n1·prefix + n1(n1+1)/2 + (s - n1)·w``; without a window
    ``P = s·prefix + s(s+1)/2`` (tokens²).
    """
    s, p, w = _f(seq_len), _f(prefix_len), _f(window)
    full = s * p + 0.5 * s * (s + 1.0)
    n1 = jnp.clip(w - p, 0.0, s)
    capped = n1 * p + 0.5 * n1 * (n1 + 1.0) + (s - n1) * w
    return jnp.where(w > 0, jnp.minimum(capped, full), full)


def _prefill_core(
    hw,
    batch,
    seq_len,
    num_heads,
    num_kv_heads,
    qk_dim,
    v_dim,
    math_dtype,
    kv_dtype,
    prefix_len,
    window,
    eta_scale,
    tau,
    launch_s=None,
) -> OpCost:
    e = hw.accel.eff.attention
    b, s, h, hkv = _f(batch), _f(seq_len), _f(num_heads), _f(num_kv_heads)
    dqk, dv = _f(qk_dim), _f(v_dim)
    pairs = attended_pairs(s, prefix_len, window)
    flop = 2.0 * b * h * pairs * (dqk + dv)
    peak, eta = _math_peak_and_eff(hw, math_dtype)
    # Occupancy: U = b·h·ceil(s/128) query tiles fill the device as U / (U + U_half).
    units = b * h * ceil_div(s, _Q_TILE_ROWS)
    eta = eta * eta_scale * safe_div(units, units + e.prefill_tiles_half)
    eff_flop = 2.0 * b * h * (pairs + e.prefill_row_keys * s) * (dqk + dv)
    compute_s = safe_div(eff_flop, peak * eta) + b * h * e.prefill_seq_head_s
    kvb = get_format(kv_dtype, "kv_dtype").bytes_per_element
    ab = activation_bytes(math_dtype)
    # Q in and O out (activations), K/V of prefix + new tokens read, new K/V written to cache.
    ctx = jnp.where(
        _f(window) > 0, jnp.minimum(s + _f(prefix_len), s + _f(window)), s + _f(prefix_len)
    )
    bytes_ = b * s * h * (dqk + dv) * ab + b * (ctx + s) * hkv * (dqk + dv) * kvb
    memory_s = safe_div(bytes_, hw.accel.hbm.bw_bytes_per_s * e.decode_mem_eff)
    launch = e.prefill_launch_s if launch_s is None else launch_s
    t = launch + _combine(compute_s, memory_s, e, tau)
    return OpCost(t, compute_s, memory_s, jnp.zeros_like(t), flop, bytes_)


def attention_prefill_cost(
    hw: Hardware,
    batch,
    seq_len,
    num_heads,
    num_kv_heads,
    head_dim,
    dtype: str,
    kv_dtype: str,
    prefix_len=0.0,
    window=0.0,
    tau: float = 0.0,
) -> OpCost:
    """Causal FlashAttention prefill of ``seq_len`` new tokens per sequence (GQA/MHA/MQA).

    - Pairs ``P`` from :func:`attended_pairs` (causal half square, cached prefix, window).
    - FLOP = ``4 · b · h · d · P`` (QK^T and PV, 2 FLOP per multiply-add).
    - Compute leg ``4·b·h·d·(P + row_keys·s) / (peak·η_dtype·U/(U+U_half)) + b·h·t_seq_head``
      with ``U = b·h·ceil(s/128)`` query tiles (device occupancy).
    - Bytes = ``b·s·h·2d·act_bytes`` (Q, O) + ``b·(ctx + s)·h_kv·2d·kv_bytes`` (K/V read,
      new K/V written); GQA shares the ``h_kv`` KV heads among ``h`` query heads.
    - ``t = launch + (t_c^p + t_m^p)^(1/p)``.

    **Arguments:** ``hw``; ``batch`` (sequences), ``seq_len`` (new tokens), ``num_heads``,
    ``num_kv_heads`` (per device), ``head_dim``; ``dtype`` (static math precision), ``kv_dtype``
    (static cache format); ``prefix_len`` (cached tokens attended to, tokens), ``window``
    (sliding window in tokens, 0 = none); ``tau`` (static, 0 = exact).

    **Returns:** :class:`OpCost` (seconds, FLOP, bytes).
    """
    d = _f(head_dim)
    return _prefill_core(
        hw,
        batch,
        seq_len,
        num_heads,
        num_kv_heads,
        d,
        d,
        dtype,
        kv_dtype,
        prefix_len,
        window,
        1.0,
        tau,
    )


def _decode_mem_s(hw, bytes_, mem_eff=None):
    e = hw.accel.eff.attention
    eta = e.decode_mem_eff if mem_eff is None else mem_eff
    # eta = eta_max * B / (B + B_half)  =>  t = (B + B_half) / (bw * eta_max)
    return safe_div(bytes_ + e.decode_bytes_half, hw.accel.hbm.bw_bytes_per_s * eta)


def attention_decode_cost(
    hw: Hardware,
    batch,
    kv_len,
    num_heads,
    num_kv_heads,
    head_dim,
    dtype: str,
    kv_dtype: str,
    window=0.0,
    tau: float = 0.0,
) -> OpCost:
    """One decode step (one new token per sequence) of GQA attention over a KV cache.

    - Context ``L = min(kv_len, window)`` if ``window > 0`` else ``kv_len`` (tokens).
    - KV bytes ``B = 2 · h_kv · d · L · b · kv_bytes``; memory leg
      ``(B + B_half) / (bw · η_max)``, i.e. achieved bandwidth ``η_max·B/(B + B_half)``
      saturating with transfer size (~35% at batch 1, ~90% at large batch on H100, per the
      TensorRT-LLM measurements). Q/O bytes ``b·h·2d·2`` added.
    - FLOP ``4 · b · h · d · L``; compute leg ``FLOP/(peak·η_dc) + b·h_kv·t_cta`` where a
      (sequence, KV head) unit serves the ``h/h_kv`` query heads of its group (GQA raises
      arithmetic intensity, not the number of units); ``t_cta`` is the KV format's, and for a
      16-bit KV cache with one query head per KV head (MHA) ``decode_cta_s_bf16kv_mha``.
    - ``t = launch_kv + (t_c^p + t_m^p)^(1/p)`` (the fp8-KV kernels have their own launch
      and per-unit costs).

    **Arguments:** as :func:`attention_prefill_cost`, ``kv_len`` = cached tokens.

    **Returns:** :class:`OpCost`.
    """
    e = hw.accel.eff.attention
    b, h, hkv, d = _f(batch), _f(num_heads), _f(num_kv_heads), _f(head_dim)
    kv, w = _f(kv_len), _f(window)
    ctx = jnp.where(w > 0, jnp.minimum(kv, w), kv)
    kvb = get_format(kv_dtype, "kv_dtype").bytes_per_element
    bytes_ = 2.0 * hkv * d * ctx * b * kvb + b * h * 2.0 * d * activation_bytes(dtype)
    flop = 4.0 * b * h * d * ctx
    fp8kv = kvb <= 1.0
    # 16-bit-KV MHA (one query head per KV head, within half a head) runs its own kernel
    mha = safe_div(h, hkv) < 1.5
    cta = (
        e.decode_cta_s_fp8kv
        if fp8kv
        else jnp.where(mha, e.decode_cta_s_bf16kv_mha, e.decode_cta_s_bf16kv)
    )
    launch = e.decode_launch_s_fp8kv if fp8kv else e.decode_launch_s_bf16kv
    compute_s = (
        safe_div(flop, hw.accel.peak_flop_per_s(dtype) * e.decode_compute_eff) + b * hkv * cta
    )
    memory_s = _decode_mem_s(hw, bytes_)
    t = launch + _combine(compute_s, memory_s, e, tau)
    return OpCost(t, compute_s, memory_s, jnp.zeros_like(t), flop, bytes_)


# ---------------------------------------------------------------------------------------------
# MLA (DeepSeek-V2/V3) and DSA (DeepSeek-V3.2)


def mla_cache_bytes_per_token(kv_lora_rank, qk_rope_head_dim, kv_dtype: str):
    """Bytes cached per token per layer by MLA: ``(kv_lora_rank + rope) · kv_bytes``.

    DeepSeek-V2 paper sec. 2.1: the compressed latent ``c_KV`` plus the shared RoPE key.
    """
    return (_f(kv_lora_rank) + _f(qk_rope_head_dim)) * get_format(kv_dtype).bytes_per_element


def _mla_launch(e, kv_fmt, prefill: bool = False):
    """MLA kernel fixed time for the KV-cache format (8-bit caches run other kernels), plus
    ``mla_prefill_extra_launch_s`` for the context (prefill) kernels."""
    t = e.mla_launch_s_fp8kv if kv_fmt.compute == "fp8" else e.mla_launch_s
    return t + e.mla_prefill_extra_launch_s if prefill else t


def _mla_scale(e, kv_fmt):
    """MLA prefill efficiency multiplier for the KV-cache (= math) format."""
    return e.mla_prefill_eff_scale_fp8kv if kv_fmt.compute == "fp8" else e.mla_prefill_eff_scale


def mla_prefill_cost(
    hw: Hardware,
    batch,
    seq_len,
    num_heads,
    kv_lora_rank,
    qk_nope_head_dim,
    qk_rope_head_dim,
    v_head_dim,
    dtype: str,
    kv_dtype: str,
    prefix_len=0.0,
    tau: float = 0.0,
) -> OpCost:
    """MLA context attention, non-absorbed (K/V expanded per head from the latent).

    Each of ``h`` heads attends with QK dim ``nope + rope`` (192 for DeepSeek-V3) and V dim
    ``v_head_dim`` (128); K/V are per head (``h_kv = h``). FLOP ``2·b·h·P·(d_qk + d_v)``
    with ``P`` causal pairs (prefix included). The math runs in the KV-cache precision
    (TensorRT-LLM's FP8 context MLA quantises Q/K/V to fp8) with efficiency
    ``η_dtype · mla_prefill_eff_scale``; otherwise as :func:`attention_prefill_cost`.
    ``kv_lora_rank`` is accepted for a uniform signature (the latent is expanded by the
    ``kv_b`` projection outside this kernel).
    """
    del kv_lora_rank
    e = hw.accel.eff.attention
    fmt = get_format(kv_dtype, "kv_dtype")
    math_dtype = "fp8" if fmt.compute == "fp8" else dtype
    dqk = _f(qk_nope_head_dim) + _f(qk_rope_head_dim)
    return _prefill_core(
        hw,
        batch,
        seq_len,
        num_heads,
        num_heads,
        dqk,
        v_head_dim,
        math_dtype,
        kv_dtype,
        prefix_len,
        0.0,
        _mla_scale(e, fmt),
        tau,
        _mla_launch(e, fmt, prefill=True),
    )


def mla_decode_cost(
    hw: Hardware,
    batch,
    kv_len,
    num_heads,
    kv_lora_rank,
    qk_rope_head_dim,
    dtype: str,
    kv_dtype: str,
    tau: float = 0.0,
    attended=None,
) -> OpCost:
    """Absorbed MLA decode (FlashMLA-style): every head attends over the shared latent cache.

    - Context ``L = kv_len`` (or ``attended`` tokens, e.g. DSA's top-k).
    - Bytes: the latent cache ``b · L · (r + rope) · kv_bytes`` read once per sequence (all
      heads share it) + queries ``b·h·(r+rope)`` and outputs ``b·h·r`` in 16 bit.
    - FLOP ``2 · b · h · L · ((r + rope) + r)``: scores with 576-dim queries, output in the
      512-dim latent (DeepSeek-V3: r = 512, rope = 64); compute ∝ heads.
    - Compute leg ``FLOP/(peak_kv·η_mla_kv) + b·(t_seq + h·t_head)``; the math runs in the
      KV-cache precision (fp8 MLA kernels use fp8 MMA).
    - ``t = launch + (t_c^p + t_m^p)^(1/p)``, the memory leg at ``mla_decode_mem_eff`` of
      HBM bandwidth (ramping with ``decode_bytes_half`` like GQA decode).
    """
    e = hw.accel.eff.attention
    b, h, r, rope = _f(batch), _f(num_heads), _f(kv_lora_rank), _f(qk_rope_head_dim)
    ctx = _f(kv_len) if attended is None else _f(attended)
    fmt = get_format(kv_dtype, "kv_dtype")
    bytes_ = b * ctx * (r + rope) * fmt.bytes_per_element + b * h * (2.0 * r + rope) * 2.0
    flop = 2.0 * b * h * ctx * (2.0 * r + rope)
    if fmt.compute == "fp8":
        peak, eta = hw.accel.peak_flop_per_s("fp8"), e.mla_decode_eff_fp8
    else:
        peak, eta = hw.accel.peak_flop_per_s(dtype), e.mla_decode_eff_bf16
    compute_s = safe_div(flop, peak * eta) + b * (e.mla_decode_seq_s + h * e.mla_decode_head_s)
    memory_s = _decode_mem_s(hw, bytes_, e.mla_decode_mem_eff)
    t = _mla_launch(e, fmt) + _combine(compute_s, memory_s, e, tau)
    return OpCost(t, compute_s, memory_s, jnp.zeros_like(t), flop, bytes_)


def dsa_attended_tokens(kv_len, index_topk):
    """Tokens DSA attends per query: ``min(kv_len, index_topk)`` (DeepSeek-V3.2 report)."""
    return jnp.minimum(_f(kv_len), _f(index_topk))


def dsa_indexer_cost(
    hw: Hardware,
    batch,
    num_queries,
    kv_len,
    index_num_heads,
    index_head_dim,
    index_dtype: str = "fp8",
    tau: float = 0.0,
) -> OpCost:
    """DeepSeek-V3.2 lightning indexer: score every cached token, then select the top-k.

    **Not fitted to measurements** (no DSA timings exist in the training data); derived from
    the same physics and parameters as the attention kernels.

    - Scoring: for each of ``b·q`` queries and each of its ``kv_len`` keys,
      ``Σ_j w_j · ReLU(q_j · k)`` over ``index_num_heads`` heads of dim ``index_head_dim``:
      FLOP ``2 · b · q · kv · H_I · d_I`` in fp8 (the report runs the indexer in FP8) at the
      decode compute efficiency; plus ``b·q`` units of per-unit overhead.
    - Bytes: the indexer key cache ``b · kv · d_I · bytes(index_dtype)`` once per sequence
      (queries of a sequence share it), scores ``b · q · kv · 4`` bytes (fp32) written and
      re-read by the top-k selection (a radix select reads them about twice).
    - ``t = 2 launches + (t_c^p + t_m^p)^(1/p)`` (score kernel + top-k kernel).

    **Arguments:** ``num_queries`` = query tokens per sequence (1 in decode, the chunk length
    in prefill; for causal prefill pass the mean context as ``kv_len``).
    """
    e = hw.accel.eff.attention
    b, q, kv = _f(batch), _f(num_queries), _f(kv_len)
    hi, di = _f(index_num_heads), _f(index_head_dim)
    flop = 2.0 * b * q * kv * hi * di
    kb = get_format(index_dtype).bytes_per_element
    bytes_ = b * kv * di * kb + 3.0 * b * q * kv * 4.0
    compute_s = safe_div(flop, hw.accel.peak_flop_per_s(index_dtype) * e.decode_compute_eff)
    compute_s = compute_s + b * q * e.decode_cta_s_fp8kv
    memory_s = _decode_mem_s(hw, bytes_)
    t = 2.0 * e.decode_launch_s_fp8kv + _combine(compute_s, memory_s, e, tau)
    return OpCost(t, compute_s, memory_s, jnp.zeros_like(t), flop, bytes_)


def dsa_decode_cost(
    hw: Hardware,
    batch,
    kv_len,
    num_heads,
    kv_lora_rank,
    qk_rope_head_dim,
    index_topk,
    index_num_heads,
    index_head_dim,
    dtype: str,
    kv_dtype: str,
    tau: float = 0.0,
) -> OpCost:
    """DSA decode = indexer over all ``kv_len`` tokens + absorbed MLA over ``min(kv, topk)``.

    Not fitted (no measurements); see :func:`dsa_indexer_cost` and :func:`mla_decode_cost`.
    """
    idx = dsa_indexer_cost(hw, batch, 1.0, kv_len, index_num_heads, index_head_dim, "fp8", tau)
    att = mla_decode_cost(
        hw,
        batch,
        kv_len,
        num_heads,
        kv_lora_rank,
        qk_rope_head_dim,
        dtype,
        kv_dtype,
        tau,
        attended=dsa_attended_tokens(kv_len, index_topk),
    )
    return idx + att


def dsa_prefill_cost(
    hw: Hardware,
    batch,
    seq_len,
    num_heads,
    kv_lora_rank,
    qk_nope_head_dim,
    qk_rope_head_dim,
    v_head_dim,
    index_topk,
    index_num_heads,
    index_head_dim,
    dtype: str,
    kv_dtype: str,
    prefix_len=0.0,
    tau: float = 0.0,
) -> OpCost:
    """DSA prefill: indexer over the causal context + sparse MLA over at most top-k keys.

    Not fitted (no measurements). The indexer scores ``P`` causal pairs (mean context
    ``P/s`` per query). The sparse attention runs MLA in its absorbed form over the selected
    keys (as DeepSeek-V3.2's sparse kernels do): each query attends ``min(c_i, topk)``
    keys, i.e. :func:`attended_pairs` with ``window = topk``; costed as the MLA prefill
    kernel with that cap (FLOP per pair ``2·((r + rope) + r)`` per head).
    """
    s = _f(seq_len)
    pairs = attended_pairs(s, prefix_len)
    mean_ctx = safe_div(pairs, s)
    idx = dsa_indexer_cost(hw, batch, s, mean_ctx, index_num_heads, index_head_dim, "fp8", tau)
    e = hw.accel.eff.attention
    fmt = get_format(kv_dtype, "kv_dtype")
    math_dtype = "fp8" if fmt.compute == "fp8" else dtype
    # Absorbed form: QK dim r + rope against a single shared latent "KV head", V dim r.
    att = _prefill_core(
        hw,
        batch,
        s,
        num_heads,
        1.0,
        _f(kv_lora_rank) + _f(qk_rope_head_dim),
        kv_lora_rank,
        math_dtype,
        kv_dtype,
        prefix_len,
        index_topk,
        _mla_scale(e, fmt),
        tau,
        _mla_launch(e, fmt, prefill=True),
    )
    return idx + att


# ---------------------------------------------------------------------------------------------
# The whole MLA attention block (projections + kernel), as the whole-model step uses it.


def mla_module_cost(
    hw: Hardware,
    model: ModelSpec,
    batch,
    seq_len,
    kv_len,
    num_heads_per_device,
    phase: str,
    gemm_dtype: str = "fp8_block",
    kv_dtype: str = "fp8",
    dtype: str = "bf16",
    bmm_dtype: str = "bf16",
    tau: float = 0.0,
) -> OpCost:
    """One MLA (or DSA) attention block of ``model`` on one device, TP over heads.

    ``phase`` (static): ``"prefill"`` (``seq_len`` new tokens per sequence after
    ``kv_len - seq_len`` cached ones) or ``"decode"`` (one token, ``kv_len`` cached).
    ``T = batch · seq_len`` tokens (decode: ``batch``), ``h`` = ``num_heads_per_device``.

    GEMMs (``gemm_cost``, in ``gemm_dtype``; q_a/kv_a are replicated per device):
    - ``q_a``: ``T × q_lora ← hidden`` (or ``q`` directly when ``q_lora_rank = 0``),
      ``q_b``: ``T × h·(nope+rope) ← q_lora``, ``kv_a``: ``T × (r + rope) ← hidden``,
      ``o``: ``T × hidden ← h·v``.
    - prefill (non-absorbed): ``kv_b``: ``T_ctx × h·(nope + v) ← r`` expanding the latent of
      every attended token, ``T_ctx = batch · kv_len``; kernel :func:`mla_prefill_cost`.
    - decode (absorbed): ``W_UK`` per head (``T × r ← nope``, as one GEMM with
      ``n = h·r``) and ``W_UV`` (``T × h·v ← r``) in ``bmm_dtype``; kernel
      :func:`mla_decode_cost`.
    - DSA models add :func:`dsa_indexer_cost` and attend ``min(kv, index_topk)`` keys.
    - Small kernels (RMSNorm of q/kv latents, RoPE, quantisation, cache append):
      ``mla_module_fixed_s + T · (mla_module_row_s + h · mla_module_token_s)`` (RMSNorms of
      the latents, k RoPE, quantisation and the cache append are per token; q RoPE is per
      token and head).
    - Back to back in one CUDA graph the block's kernels hide a share
      ``mla_module_launch_overlap`` of their standalone fixed times: minus that share of the
      projections' and BMMs' :func:`gemm_fixed_s`, the MLA kernel's launch and (DSA) the
      indexer's two launches.
    """
    from ._gemm import gemm_costs, gemm_fixed_s

    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase={phase!r} must be 'prefill' or 'decode'")
    if model.attention not in ("mla", "dsa"):
        raise ValueError(
            f"mla_module_cost needs an MLA/DSA model, got attention={model.attention!r}"
        )
    e = hw.accel.eff.attention
    b, h = _f(batch), _f(num_heads_per_device)
    s = _f(seq_len) if phase == "prefill" else jnp.ones_like(b)
    kv = _f(kv_len)
    tokens = b * s
    d = model.hidden_size
    r, rope, nope, vd = (
        model.kv_lora_rank,
        model.qk_rope_head_dim,
        model.qk_nope_head_dim,
        model.v_head_dim,
    )
    qdim = h * (nope + rope)
    has_qlora = model.q_lora_rank > 0
    # projections in the weight format: q down (or the full q without a q LoRA), q up (gated
    # off without a q LoRA), kv down, output; prefill also expands the cached latents (kv up)
    proj = [
        (tokens, jnp.where(has_qlora, model.q_lora_rank, qdim), d),
        (tokens, qdim, jnp.where(has_qlora, model.q_lora_rank, 1.0)),
        (tokens, r + rope, d),
        (tokens, d, h * vd),
    ]
    gate = [1.0, jnp.where(has_qlora, 1.0, 0.0), 1.0, 1.0]
    if phase == "prefill":
        prefix = jnp.maximum(kv - s, 0.0)
        proj.append((b * (prefix + s), h * (nope + vd), r))
        gate.append(1.0)
    gemms = gemm_costs(hw, proj, gemm_dtype, tau, weights=gate)
    if phase == "prefill":
        if model.attention == "dsa":
            att = dsa_prefill_cost(
                hw,
                b,
                s,
                h,
                r,
                nope,
                rope,
                vd,
                model.index_topk,
                model.index_num_heads,
                model.index_head_dim,
                dtype,
                kv_dtype,
                prefix,
                tau,
            )
        else:
            att = mla_prefill_cost(hw, b, s, h, r, nope, rope, vd, dtype, kv_dtype, prefix, tau)
        parts = [gemms, att]
    else:
        # absorbed up-projections: q_nope into the latent space, the latent output into v
        bmm = gemm_costs(hw, [(tokens, h * r, nope), (tokens, h * vd, r)], bmm_dtype, tau)
        if model.attention == "dsa":
            att = dsa_decode_cost(
                hw,
                b,
                kv,
                h,
                r,
                rope,
                model.index_topk,
                model.index_num_heads,
                model.index_head_dim,
                dtype,
                kv_dtype,
                tau,
            )
        else:
            att = mla_decode_cost(hw, b, kv, h, r, rope, dtype, kv_dtype, tau)
        parts = [gemms, bmm, att]
    small_s = e.mla_module_fixed_s + tokens * (e.mla_module_row_s + h * e.mla_module_token_s)
    small = OpCost(small_s, jnp.zeros_like(small_s), small_s)
    # back to back in one graph, part of each kernel's standalone fixed time is hidden
    n_proj = jnp.sum(jnp.asarray(gate))
    launches = n_proj * gemm_fixed_s(hw, gemm_dtype) + _mla_launch(
        e, get_format(kv_dtype), prefill=phase != "decode"
    )
    if phase == "decode":
        launches = launches + 2.0 * gemm_fixed_s(hw, bmm_dtype)
    if model.attention == "dsa":
        launches = launches + 2.0 * e.decode_launch_s_fp8kv  # indexer score + top-k kernels
    hidden_s = -e.mla_module_launch_overlap * launches
    hidden = OpCost(hidden_s, jnp.zeros_like(hidden_s), jnp.zeros_like(hidden_s))
    return sum_costs(*parts, small, hidden)
