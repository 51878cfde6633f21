"""One iteration of a whole model under a parallel plan: prefill, decode and mixed steps.

Everything here is a pure function of pytrees: ``iteration(hw, model, plan, batch)`` returns a
:class:`StepResult` with the latency, a per-component breakdown and the memory per device.
Layer kinds enter as counts (no Python loop over layers), so the model's layer counts are
differentiable leaves too.

Pipeline model: the instance's sequences are split into ``pp`` micro-batches; in steady state
every stage works on one micro-batch per tick, and one micro-batch needs ``pp`` ticks to pass
all stages. Iteration latency = ``pp * (stage time of one micro-batch + p2p hand-off)`` plus
the embedding (first stage) and LM head (last stage), each once.
"""

import equinox as eqx
import jax.numpy as jnp

from .._dtypes import get_format
from .._numerics import as_float_array, safe_div, smooth_max2
from .._types import FloatScalarLike
from ..hardware import Hardware
from ..model._spec import ModelSpec
from ..ops import (
    OpCost,
    all_gather_cost,
    all_reduce_cost,
    attention_decode_cost,
    attention_prefill_cost,
    elementwise_cost,
    embedding_cost,
    gemm_cost,
    gemm_costs,
    mla_module_cost,
    moe_combine_cost,
    moe_dispatch_cost,
    moe_layer_cost,
    p2p_cost,
)
from ._plan import ParallelPlan


class BatchShape(eqx.Module):
    """What one iteration of one model instance processes (all float leaves).

    - ``decode_seqs``: sequences generating one token, with mean cached length
      ``decode_context_tokens``.
    - ``prefill_seqs``: sequences prefilling a chunk of ``prefill_chunk_tokens`` new tokens on
      top of ``prefill_prefix_tokens`` already-cached tokens (prefix-cache hits or earlier
      chunks).
    """

    decode_seqs: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    decode_context_tokens: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    prefill_seqs: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    prefill_chunk_tokens: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    prefill_prefix_tokens: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)

    @property
    def tokens(self):
        """New tokens processed this iteration."""
        return self.decode_seqs + self.prefill_seqs * self.prefill_chunk_tokens

    def scale(self, f) -> "BatchShape":
        """The same batch with ``f`` times the sequences (e.g. one pipeline micro-batch)."""
        return BatchShape(
            self.decode_seqs * f,
            self.decode_context_tokens,
            self.prefill_seqs * f,
            self.prefill_chunk_tokens,
            self.prefill_prefix_tokens,
        )


def decode_batch(batch, context_tokens) -> BatchShape:
    """A pure decode step: ``batch`` sequences at mean cached length ``context_tokens``."""
    return BatchShape(decode_seqs=batch, decode_context_tokens=context_tokens)


def prefill_batch(batch, seq_len, prefix_tokens=0.0) -> BatchShape:
    """A prefill of ``batch`` prompts of ``seq_len`` new tokens after ``prefix_tokens`` cached."""
    return BatchShape(
        prefill_seqs=batch, prefill_chunk_tokens=seq_len, prefill_prefix_tokens=prefix_tokens
    )


def mixed_batch(decode_seqs, context_tokens, prefill_tokens, chunk_tokens, prefix_tokens=0.0):
    """A chunked-prefill step: decode tokens plus ``prefill_tokens`` new prompt tokens
    arriving in chunks of ``chunk_tokens`` (so ``prefill_tokens / chunk_tokens`` sequences)."""
    return BatchShape(
        decode_seqs=decode_seqs,
        decode_context_tokens=context_tokens,
        prefill_seqs=safe_div(prefill_tokens, chunk_tokens),
        prefill_chunk_tokens=chunk_tokens,
        prefill_prefix_tokens=prefix_tokens,
    )


class Breakdown(eqx.Module):
    """Time of one iteration split by component (seconds, summed over the whole instance's
    critical path). ``compute_s``/``memory_s`` are the summed roofline legs of all kernels
    (what the time would be if each kernel were purely compute or memory bound)."""

    attention_s: FloatScalarLike = eqx.field(converter=as_float_array)
    dense_ffn_s: FloatScalarLike = eqx.field(converter=as_float_array)
    moe_s: FloatScalarLike = eqx.field(converter=as_float_array)
    tp_comm_s: FloatScalarLike = eqx.field(converter=as_float_array)
    moe_comm_s: FloatScalarLike = eqx.field(converter=as_float_array)
    pp_comm_s: FloatScalarLike = eqx.field(converter=as_float_array)
    embed_lm_head_s: FloatScalarLike = eqx.field(converter=as_float_array)
    norm_s: FloatScalarLike = eqx.field(converter=as_float_array)
    compute_s: FloatScalarLike = eqx.field(converter=as_float_array)
    memory_s: FloatScalarLike = eqx.field(converter=as_float_array)

    def as_dict(self) -> dict[str, FloatScalarLike]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class MemoryUsage(eqx.Module):
    """Bytes per device (the fullest pipeline stage) against usable capacity."""

    weight_bytes: FloatScalarLike = eqx.field(converter=as_float_array)
    kv_cache_bytes: FloatScalarLike = eqx.field(converter=as_float_array)
    activation_bytes: FloatScalarLike = eqx.field(converter=as_float_array)
    capacity_bytes: FloatScalarLike = eqx.field(converter=as_float_array)

    @property
    def total_bytes(self):
        return self.weight_bytes + self.kv_cache_bytes + self.activation_bytes

    @property
    def margin_bytes(self):
        """Usable capacity minus use; negative means it does not fit."""
        return self.capacity_bytes - self.total_bytes

    @property
    def fits(self):
        return self.margin_bytes >= 0


class StepResult(eqx.Module):
    """Latency, breakdown and memory of one iteration; ``tokens`` = new tokens it processed."""

    latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    breakdown: Breakdown
    memory: MemoryUsage
    tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    flop_per_device: FloatScalarLike = eqx.field(converter=as_float_array)


# --------------------------------------------------------------------------------------------
# per-layer pieces (one device, one micro-batch)
# --------------------------------------------------------------------------------------------


def _heads_per_device(model: ModelSpec, plan: ParallelPlan):
    hq = model.num_heads / plan.tp
    # KV heads are replicated when tp exceeds them (each device keeps at least one).
    hkv = jnp.maximum(model.num_kv_heads / plan.tp, 1.0)
    return hq, hkv


def gqa_attention_block(hw, model, plan, mb: BatchShape, m_tok, window, tau) -> OpCost:
    """Projections + attention kernel(s) of one GQA layer for one attention replica."""
    hq, hkv = _heads_per_device(model, plan)
    hd, d = model.head_dim, model.hidden_size
    wd = plan.weight_dtype
    proj = gemm_costs(hw, [(m_tok, (hq + 2.0 * hkv) * hd, d), (m_tok, d, hq * hd)], wd, tau)
    dec = attention_decode_cost(
        hw,
        mb.decode_seqs / plan.dp,
        mb.decode_context_tokens,
        hq,
        hkv,
        hd,
        plan.attention_dtype,
        plan.kv_dtype,
        window=window,
        tau=tau,
    )
    pre = attention_prefill_cost(
        hw,
        mb.prefill_seqs / plan.dp,
        mb.prefill_chunk_tokens,
        hq,
        hkv,
        hd,
        plan.attention_dtype,
        plan.kv_dtype,
        prefix_len=mb.prefill_prefix_tokens,
        window=window,
        tau=tau,
    )
    return proj + gated(dec, mb.decode_seqs) + gated(pre, mb.prefill_seqs)


def gated(cost: OpCost, count) -> OpCost:
    """Drop a kernel (its launch overhead included) when it has no work in this step."""
    return cost.scale(jnp.where(count > 0, 1.0, 0.0))


def mla_attention_block(hw, model, plan, mb: BatchShape, tau) -> OpCost:
    """MLA/DSA block (projections + kernel) for one attention replica, heads split over tp."""
    hq = model.num_heads / plan.tp
    dec = mla_module_cost(
        hw,
        model,
        mb.decode_seqs / plan.dp,
        1.0,
        mb.decode_context_tokens,
        hq,
        "decode",
        gemm_dtype=plan.weight_dtype,
        kv_dtype=plan.kv_dtype,
        dtype=plan.attention_dtype,
        tau=tau,
    )
    pre = mla_module_cost(
        hw,
        model,
        mb.prefill_seqs / plan.dp,
        mb.prefill_chunk_tokens,
        mb.prefill_prefix_tokens + mb.prefill_chunk_tokens,
        hq,
        "prefill",
        gemm_dtype=plan.weight_dtype,
        kv_dtype=plan.kv_dtype,
        dtype=plan.attention_dtype,
        tau=tau,
    )
    return gated(dec, mb.decode_seqs) + gated(pre, mb.prefill_seqs)


def dense_ffn_block(hw, model, plan, m_tok, width, dtype, tau) -> OpCost:
    """Gated (or plain) MLP of ``width`` intermediate units, TP-sharded over ``plan.tp``."""
    mats_in = 2.0 if model.gated_mlp else 1.0
    w = width / plan.tp
    d = model.hidden_size
    up_down = gemm_costs(hw, [(m_tok, mats_in * w, d), (m_tok, d, w)], dtype, tau)
    act = elementwise_cost(hw, m_tok * w, (mats_in + 1.0) * 2.0, tau)
    return up_down + act


def tp_all_reduce(hw, plan, m_tok, hidden, tau) -> OpCost:
    """All-reduce of ``m_tok`` hidden states (``comm_dtype``) over the ``plan.tp`` group."""
    nbytes = m_tok * hidden * get_format(plan.comm_dtype).bytes_per_element
    return all_reduce_cost(hw, nbytes, plan.tp, tau=tau)


def _moe_block(hw, model, plan, m_tok, has_prefill, tau) -> tuple[OpCost, OpCost]:
    """(compute, communication) of one MoE layer on one device.

    The group of ``tp * dp`` devices sees ``m_tok * dp`` distinct tokens; each EP rank routes
    ``1/(tp*dp)`` of them (dispatch), computes ``tokens/ep`` tokens' worth of routed work for
    its ``E/ep`` experts (``moe_layer_cost`` semantics: the ``T`` tokens entering the layer,
    of whose ``T·k`` assignments a rank holding ``E/ep`` experts computes ``T·k/ep``; after
    the dispatch every rank sees all ``group_tokens``' assignments to its experts) and
    combines them back; expert-TP shards reduce over ``moe_tp``.
    """
    group_tokens = m_tok * plan.dp
    routed = moe_layer_cost(
        hw,
        group_tokens,
        model.hidden_size,
        model.moe_intermediate,
        model.num_experts + plan.redundant_experts,
        model.experts_per_token,
        plan.moe_tp,
        plan.ep,
        plan.moe_dtype,
        gated=model.gated_mlp,
        tau=tau,
    )
    shared = dense_ffn_block(
        hw,
        model,
        plan,
        m_tok,
        model.num_shared_experts * model.moe_intermediate,
        plan.weight_dtype,
        tau,
    )
    shared = gated(shared, model.num_shared_experts)
    per_rank = group_tokens / (plan.tp * plan.dp)
    comm_dtype = plan.comm_dtype
    # Dispatch carries the activations in the experts' input precision when the expert GEMMs
    # quantise them (DeepEP dispatches fp8 for fp8 experts), combine returns bf16.
    fmt = get_format(plan.moe_dtype)
    disp_dtype = comm_dtype
    if not fmt.weight_only and fmt.compute in ("fp8", "fp4"):
        disp_dtype = "fp8" if fmt.compute == "fp8" else "nvfp4"
    args = (hw, per_rank, model.hidden_size, model.experts_per_token, model.num_experts, plan.ep)

    routing = dict(
        routing_groups=model.routing_groups, routing_topk_groups=model.routing_topk_groups
    )

    def a2a_cost(impl):
        return moe_dispatch_cost(
            *args, disp_dtype, impl=impl, tau=tau, **routing
        ) + moe_combine_cost(*args, comm_dtype, impl=impl, tau=tau, **routing)

    # Decode-only steps use the low-latency all-to-all kernels (DeepEP LL), steps that carry
    # prefill tokens the high-throughput ones (DeepEP HT), as SGLang/TRT-LLM deployments do.
    use_ht = jnp.where(has_prefill > 0, 1.0, 0.0)
    a2a = a2a_cost("deepep_ht").scale(use_ht) + a2a_cost("deepep_ll").scale(1.0 - use_ht)
    a2a = gated(a2a, plan.ep - 1.0)
    red_bytes = (
        group_tokens / plan.ep * model.hidden_size * get_format(comm_dtype).bytes_per_element
    )
    moe_red = all_reduce_cost(hw, red_bytes, plan.moe_tp, tau=tau)
    return routed + shared, a2a + moe_red


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------


def memory_usage(hw: Hardware, model: ModelSpec, plan: ParallelPlan, batch: BatchShape):
    """Bytes per device of the fullest pipeline stage.

    - Weights: attention (query/output projections split over ``tp``; GQA KV projections keep
      at least one head per device; MLA down-projections ``q_a``/``kv_a`` replicated), dense
      FFN over ``tp``, routed experts ``E/ep`` per device each split over ``moe_tp``, shared
      experts over ``tp``, the router replicated, one embedding matrix over ``tp`` (two on a
      single-stage plan with untied embeddings).
    - KV cache: every resident sequence's cached tokens for the stage's ``L/pp`` layers; GQA
      per-device KV heads, MLA latent replicated over ``tp``; sliding-window layers cap a
      sequence at the window.
    - Activations: transient buffers of the largest micro-batch (hidden states, the widest
      projection output and fp32 logits).
    """
    wb = get_format(plan.weight_dtype).bytes_per_element
    mb_ = get_format(plan.moe_dtype).bytes_per_element
    kvb = get_format(plan.kv_dtype).bytes_per_element
    d = model.hidden_size
    layers = model.num_layers / plan.pp
    dense_layers = model.num_dense_layers / plan.pp
    moe_layers = model.num_moe_layers / plan.pp
    if model.attention == "gqa":
        hq, hkv = _heads_per_device(model, plan)
        attn_params = 2.0 * d * hq * model.head_dim + 2.0 * d * hkv * model.head_dim
    else:
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim
        replicated = d * (model.q_lora_rank + model.kv_lora_rank + model.qk_rope_head_dim)
        split = (
            model.q_lora_rank * model.num_heads * qk
            + model.kv_lora_rank * model.num_heads * (model.qk_nope_head_dim + model.v_head_dim)
            + model.num_heads * model.v_head_dim * d
        ) / plan.tp
        attn_params = replicated + split
        if model.attention == "dsa":
            attn_params = attn_params + (
                model.q_lora_rank * model.index_num_heads * model.index_head_dim
                + d * model.index_head_dim
                + d * model.index_num_heads
            )
    weights = layers * attn_params * wb
    weights = weights + dense_layers * model.dense_ffn_param_count() / plan.tp * wb
    if model.has_moe:
        experts = model.num_experts + plan.redundant_experts
        routed = experts / plan.ep * model.expert_param_count() / plan.moe_tp * mb_
        shared = model.num_shared_experts * model.expert_param_count() / plan.tp * wb
        router = d * model.num_experts * 4.0
        weights = weights + moe_layers * (routed + shared + router)
    n_emb = jnp.where(plan.pp > 1, 1.0, 1.0 if model.tie_word_embeddings else 2.0)
    weights = weights + n_emb * model.vocab_size * d / plan.tp * 2.0

    # KV cache of all resident sequences (every micro-batch keeps its cache on every stage).
    seqs_dec = batch.decode_seqs / plan.dp
    seqs_pre = batch.prefill_seqs / plan.dp
    ctx_pre = batch.prefill_prefix_tokens + batch.prefill_chunk_tokens
    if model.attention == "gqa":
        per_tok_layer = 2.0 * hkv * model.head_dim * kvb
    else:
        per_tok_layer = model.kv_elems_per_token_per_layer() * kvb
    full_layers = layers - model.num_sliding_layers / plan.pp
    sliding_layers = model.num_sliding_layers / plan.pp
    win = model.sliding_window_tokens
    cap = lambda c: jnp.where(win > 0, jnp.minimum(c, win), c)
    tok_full = seqs_dec * batch.decode_context_tokens + seqs_pre * ctx_pre
    tok_slide = seqs_dec * cap(batch.decode_context_tokens) + seqs_pre * cap(ctx_pre)
    kv = per_tok_layer * (full_layers * tok_full + sliding_layers * tok_slide)

    # Transient activations of one micro-batch.
    m_tok = batch.scale(1.0 / plan.pp).tokens / plan.dp
    if model.attention == "gqa":
        proj = (hq + 2.0 * hkv) * model.head_dim
    else:
        proj = model.num_heads / plan.tp * (model.qk_nope_head_dim + model.qk_rope_head_dim)
    width = jnp.maximum(proj, 2.0 * model.ffn_intermediate / plan.tp)
    moe_width = jnp.where(
        model.num_experts > 0,
        model.experts_per_token * plan.dp / plan.ep * 2.0 * model.moe_intermediate / plan.moe_tp,
        0.0,
    )
    act = m_tok * (4.0 * d + jnp.maximum(width, moe_width)) * 2.0
    logit_rows = (batch.decode_seqs + batch.prefill_seqs) / (plan.pp * plan.dp)
    act = act + logit_rows * model.vocab_size / plan.tp * 4.0
    capacity = hw.accel.hbm.capacity_bytes * hw.accel.usable_memory_fraction
    return MemoryUsage(weights, kv, act, capacity)


# --------------------------------------------------------------------------------------------
# the iteration
# --------------------------------------------------------------------------------------------


def _stage_parts(hw, model, plan, mb: BatchShape, tau):
    """Costs of one pipeline stage for micro-batch ``mb`` on one device:
    (attention, TP all-reduces, norms, dense FFN, MoE compute, MoE communication, p2p)."""
    m_tok = mb.tokens / plan.dp  # tokens per attention replica
    d = model.hidden_size
    layers = model.num_layers / plan.pp
    dense_layers = model.num_dense_layers / plan.pp
    moe_layers = model.num_moe_layers / plan.pp
    if model.attention == "gqa":
        sliding = model.num_sliding_layers / plan.pp
        full = layers - sliding
        attn_full = gqa_attention_block(hw, model, plan, mb, m_tok, 0.0, tau)
        attn_win = gqa_attention_block(hw, model, plan, mb, m_tok, model.sliding_window_tokens, tau)
        attn = attn_full.scale(full) + attn_win.scale(sliding)
    else:
        attn = mla_attention_block(hw, model, plan, mb, tau).scale(layers)
    tp_comm = tp_all_reduce(hw, plan, m_tok, d, tau)
    # attention output all-reduce on every layer; dense-FFN all-reduce on dense layers
    tp_comm_total = tp_comm.scale(layers + dense_layers)
    norms = elementwise_cost(hw, m_tok * d, 2.0 * 2.0 * 2.0, tau).scale(layers)
    dense = dense_ffn_block(hw, model, plan, m_tok, model.ffn_intermediate, plan.weight_dtype, tau)
    dense = dense.scale(dense_layers)
    if model.has_moe:
        moe_compute, moe_comm = _moe_block(hw, model, plan, m_tok, mb.prefill_seqs, tau)
        moe_compute, moe_comm = moe_compute.scale(moe_layers), moe_comm.scale(moe_layers)
    else:
        moe_compute = moe_comm = OpCost.zero()
    act_bytes = get_format(plan.comm_dtype).bytes_per_element
    p2p = p2p_cost(hw, m_tok * d * act_bytes, 0.0, tau=tau)
    p2p = gated(p2p, plan.pp - 1.0)
    return attn, tp_comm_total, norms, dense, moe_compute, moe_comm, p2p


def iteration(
    hw: Hardware,
    model: ModelSpec,
    plan: ParallelPlan,
    batch: BatchShape,
    tau: float = 0.0,
) -> StepResult:
    """Latency, breakdown and memory of one iteration of ``batch`` on one model instance.

    **Arguments:** the hardware, model, parallel plan and the batch processed this iteration
    (use :func:`decode_batch`, :func:`prefill_batch` or :func:`mixed_batch`); ``tau`` is the
    smooth-max temperature of every roofline (0 = exact).

    **Returns:** a :class:`StepResult`.
    """
    mb = batch.scale(1.0 / plan.pp)  # one pipeline micro-batch
    d = model.hidden_size
    if plan.two_batch_overlap:
        # Two-batch overlap (SGLang TBO / DeepSeek's dual micro-batch): the micro-batch is split
        # in two halves whose compute hides the other's communication, so per stage
        # t = 2 * max(compute(half), comm(half)) instead of compute + comm.
        parts = _stage_parts(hw, model, plan, mb.scale(0.5), tau)
        twice = lambda c: c.scale(2.0)
        attn, tp_comm_total, norms, dense, moe_compute, moe_comm, p2p = map(twice, parts)
        compute = attn + norms + dense + moe_compute
        comm = tp_comm_total + moe_comm
        stage_time_s = smooth_max2(compute.time_s, comm.time_s, tau)
    else:
        attn, tp_comm_total, norms, dense, moe_compute, moe_comm, p2p = _stage_parts(
            hw, model, plan, mb, tau
        )
        stage_time_s = (attn + tp_comm_total + norms + dense + moe_compute + moe_comm).time_s

    # embedding on the first stage, LM head on the last: once per iteration, whole batch
    m_all = batch.tokens / plan.dp
    logit_rows = (batch.decode_seqs + batch.prefill_seqs) / plan.dp
    emb = embedding_cost(hw, m_all, d, 2.0, tau)
    lm = gemm_cost(hw, logit_rows, model.vocab_size / plan.tp, d, "bf16", tau, out_dtype="fp32")
    gather = all_gather_cost(hw, logit_rows * model.vocab_size / plan.tp * 4.0, plan.tp, tau=tau)
    head = emb + lm + gather

    stage = attn + tp_comm_total + norms + dense + moe_compute + moe_comm
    latency = plan.pp * (stage_time_s + p2p.time_s) + head.time_s
    pp_ = plan.pp
    bd = Breakdown(
        attention_s=pp_ * attn.time_s,
        dense_ffn_s=pp_ * dense.time_s,
        moe_s=pp_ * moe_compute.time_s,
        tp_comm_s=pp_ * tp_comm_total.time_s + gather.time_s,
        moe_comm_s=pp_ * moe_comm.time_s,
        pp_comm_s=pp_ * p2p.time_s,
        embed_lm_head_s=emb.time_s + lm.time_s,
        norm_s=pp_ * norms.time_s,
        compute_s=pp_ * (stage.compute_s) + head.compute_s,
        memory_s=pp_ * (stage.memory_s) + head.memory_s,
    )
    mem = memory_usage(hw, model, plan, batch)
    # each device runs its stage once per micro-batch, pp micro-batches per iteration
    flop = plan.pp * stage.flop + head.flop
    return StepResult(latency, bd, mem, batch.tokens, flop)
