"""Attention-FFN disaggregation (AFD) for MoE decode: Step-3 AFD, MegaScale-Infer.

Each of ``instances`` independent AFD groups has ``A = attention_devices`` attention devices
(data-parallel attention replicas of ``attention_tp`` devices; each holds the attention and
dense-layer weights and the KV of its ``B`` running sequences; ``B`` per device is at most
``decode_batch``) and ``F = ffn_devices`` FFN devices (routed experts spread by expert
parallelism over ``F/ffn_moe_tp`` ranks, each expert split over ``ffn_moe_tp``; shared experts
replicated on every FFN device). Prefill runs on a separate prefill pool exactly as in
:class:`Disaggregated` (KV shipped to the attention device).

**One MoE layer, one micro-batch** (``m`` micro-batches of ``B/m`` sequences per attention
device; ``T = A·B/m`` tokens enter the FFN pool per micro-batch):

- attention ``t_a``: the attention block (projections + kernel for ``B·tp_a/m`` sequences of
  a replica, heads split over ``tp_a``), its TP all-reduce and the norms, on A;
- dispatch ``t_d``: every token goes once to each FFN device that holds one of its top-k
  experts, ``n_dst = tp_f · ep_f · P_hit`` devices (``ep_f = F/tp_f``; ``P_hit =
  1 − (1 − 1/ep_f)^k`` without group-limited routing, :func:`rank_hit_probability`); an
  attention device sends ``(B/m)·n_dst·H·b_comm`` bytes, an FFN device receives
  ``T·n_dst·H·b_comm/F``; ``t_d = max(p2p(send, x), p2p(recv, x))`` (alpha-beta with size
  saturation, :func:`diffperf.ops.p2p_cost`) where ``x = clip(A + F − domain, 0, 1)``
  (NVLink when a group fits one scale-up domain, NICs otherwise);
- experts ``t_f``: ``moe_layer_cost`` with ``T`` tokens in the layer, ``E/ep_f`` experts per
  rank (its ``T·k/ep_f`` assignments), plus the shared experts for ``T/F`` tokens per device
  and the expert-TP all-reduce;
- combine ``t_c``: the reverse of dispatch with bf16 payloads.

**Ping-pong pipeline.** The ``m`` micro-batches circulate through the four single-server
stages layer after layer with no barrier between layers (a closed cyclic flow line). With
stage times ``t_s``, ``Σ = Σ_s t_s`` and ``t_max = max_s t_s``, ``L`` MoE layers take exactly
(deterministic times, FIFO; checked against an event simulation in the tests)::

    T_moe = L · max(Σ, m · t_max) + min(Σ − t_max, (m − 1) · t_max)

The period ``max(Σ, m·t_max)`` is the micro-batch's own loop (too few micro-batches) or the
bottleneck stage serving all ``m``; the second term is the one-off fill/drain. ``m = 1``
gives ``L·Σ`` (no overlap); balanced stages with large ``m`` give ``L·m·t_max + Σ − t_max``,
i.e. ``L`` × the bottleneck stage of the whole batch (DESIGN §3's ``(m+1)/m`` law is the
per-layer-barrier bound ``(m+1)·t_max`` per layer; this is tighter). ``m`` is a relaxed float
(clipped to ≥ 1); max/min are smooth at ``tau > 0`` (bias ≤ a factor ``4**tau``).

``TPOT = max(L_dense · m · t_dense + T_moe + embedding + LM head, host overhead)``: the
first dense layers run on A alone (their micro-batches back to back); the host term is the
engine's per-iteration work (as in ``Aggregated``). Throughput, closed/open loop, TTFT and
percentiles follow :class:`Disaggregated` with ``instances·A`` decode units of ``B`` sequences.

**Memory.** A: attention and dense-layer weights over ``tp_a`` (MLA down-projections and the
router replicated), embeddings, KV of ``B·tp_a`` sequences per replica at ``ISL + OSL``, and
activations. F: ``E/ep_f`` experts split over ``tp_f`` + the shared experts per MoE layer +
two micro-batches of expert activations. The margin is the tightest of prefill, A and F.
"""

import equinox as eqx
import jax.numpy as jnp

from .._dtypes import get_format
from .._numerics import as_float_array, safe_div, smooth_max2, smooth_max_pos, smooth_min2
from .._types import FloatScalarLike
from ..hardware import Hardware
from ..model import ModelSpec
from ..ops import (
    OpCost,
    all_gather_cost,
    all_reduce_cost,
    elementwise_cost,
    embedding_cost,
    gemm_cost,
    moe_layer_cost,
    p2p_cost,
)
from ..ops._moe import rank_hit_probability
from ..stages import (
    Breakdown,
    MemoryUsage,
    ParallelPlan,
    StepResult,
    decode_batch,
    dense_ffn_block,
    gated,
    gqa_attention_block,
    memory_usage,
    mla_attention_block,
    tp_all_reduce,
)
from ._disaggregated import (
    cross_domain,
    host_overhead_s,
    prefill_pool,
    solve_serving,
)
from ._metrics import Metrics
from ._scheme import AbstractServingScheme, finish_metrics
from ._workload import Workload


def afd_pipeline_time_s(stage_s, microbatches, layers, tau: float = 0.0):
    """Time for ``microbatches`` micro-batches to pass ``layers`` layers of a cyclic pipeline.

    ``L·max(Σ t, m·max t) + min(Σ t − max t, (m − 1)·max t)`` (see the module docstring).

    **Arguments:** ``stage_s``: per-micro-batch stage times, shape ``(stages,)`` (seconds);
    ``microbatches`` (≥ 1, relaxed); ``layers``; ``tau`` smooth max/min temperature.

    **Returns:** seconds.
    """
    t = jnp.asarray(stage_s, dtype=float)
    m = jnp.maximum(jnp.asarray(microbatches, dtype=float), 1.0)
    total = jnp.sum(t)
    t_max = smooth_max_pos(t, tau)
    period = smooth_max2(total, m * t_max, tau)
    fill = smooth_min2(jnp.maximum(total - t_max, 0.0), (m - 1.0) * t_max, tau)
    return layers * period + fill


class AFDStep(eqx.Module):
    """One AFD decode step: its time, the per-micro-batch stage times and the busy time of
    each resource (seconds)."""

    tpot_s: FloatScalarLike = eqx.field(converter=as_float_array)
    attention_s: FloatScalarLike = eqx.field(converter=as_float_array)
    dispatch_s: FloatScalarLike = eqx.field(converter=as_float_array)
    ffn_s: FloatScalarLike = eqx.field(converter=as_float_array)
    combine_s: FloatScalarLike = eqx.field(converter=as_float_array)
    dense_s: FloatScalarLike = eqx.field(converter=as_float_array)
    head_s: FloatScalarLike = eqx.field(converter=as_float_array)


class AFD(AbstractServingScheme):
    """Attention-FFN disaggregated MoE decode with a separate prefill pool.

    Fields (float leaves): ``prefill_plan``, ``prefill_instances``, ``prefill_max_batch``,
    ``max_num_tokens`` (prefill side, as in :class:`Disaggregated`); ``attention_devices``
    (A), ``ffn_devices`` (F), ``microbatches`` (m ≥ 1), ``decode_batch`` (max running
    sequences per attention device), ``attention_tp``, ``ffn_moe_tp``, ``instances``
    (independent AFD groups). Static: ``weight_dtype``, ``moe_dtype``, ``kv_dtype``,
    ``comm_dtype`` of the decode side. ``prefill_hw``/``attention_hw``/``ffn_hw``: per-pool
    hardware (None = the ``hw`` argument). Equations: module docstring.
    """

    prefill_plan: ParallelPlan
    prefill_instances: FloatScalarLike = eqx.field(converter=as_float_array)
    prefill_max_batch: FloatScalarLike = eqx.field(converter=as_float_array)
    attention_devices: FloatScalarLike = eqx.field(converter=as_float_array)
    ffn_devices: FloatScalarLike = eqx.field(converter=as_float_array)
    microbatches: FloatScalarLike = eqx.field(converter=as_float_array)
    decode_batch: FloatScalarLike = eqx.field(converter=as_float_array)
    max_num_tokens: FloatScalarLike = eqx.field(converter=as_float_array, default=8192.0)
    attention_tp: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    ffn_moe_tp: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    instances: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    weight_dtype: str = eqx.field(static=True, default="bf16")
    moe_dtype: str = eqx.field(static=True, default="bf16")
    kv_dtype: str = eqx.field(static=True, default="bf16")
    comm_dtype: str = eqx.field(static=True, default="bf16")
    attention_dtype: str = eqx.field(static=True, default="bf16")
    prefill_hw: Hardware | None = None
    attention_hw: Hardware | None = None
    ffn_hw: Hardware | None = None

    def __check_init__(self):
        for f in ("weight_dtype", "moe_dtype", "kv_dtype", "comm_dtype", "attention_dtype"):
            get_format(getattr(self, f), f)

    def devices(self):
        return self.prefill_instances * self.prefill_plan.devices + self.instances * (
            self.attention_devices + self.ffn_devices
        )

    def _attention_plan(self) -> ParallelPlan:
        return ParallelPlan(
            tp=self.attention_tp,
            weight_dtype=self.weight_dtype,
            moe_dtype=self.moe_dtype,
            kv_dtype=self.kv_dtype,
            comm_dtype=self.comm_dtype,
            attention_dtype=self.attention_dtype,
        )

    def decode_step(
        self, hw: Hardware, model: ModelSpec, batch, context_tokens, tau: float = 0.0
    ) -> AFDStep:
        """One decode step with ``batch`` running sequences per attention device at mean
        context ``context_tokens`` (equations in the module docstring)."""
        if not model.has_moe:
            raise ValueError(
                f"AFD needs an MoE model (it splits the experts off the attention devices); "
                f"{model.name} has no MoE layers"
            )
        hw_a = self.attention_hw if self.attention_hw is not None else hw
        hw_f = self.ffn_hw if self.ffn_hw is not None else hw
        plan_a = self._attention_plan()
        plan_f = ParallelPlan(weight_dtype=self.weight_dtype, comm_dtype=self.comm_dtype)
        tpa = jnp.maximum(self.attention_tp, 1.0)
        a_dev = jnp.maximum(self.attention_devices, 1.0)
        f_dev = jnp.maximum(self.ffn_devices, 1.0)
        tpf = jnp.clip(self.ffn_moe_tp, 1.0, f_dev)
        ep_f = f_dev / tpf
        m = jnp.maximum(self.microbatches, 1.0)
        d = model.hidden_size
        k = model.experts_per_token
        b = jnp.asarray(batch, dtype=float)

        # --- attention side, one micro-batch of one replica -------------------------------
        seqs = b * tpa / m
        mb = decode_batch(seqs, context_tokens)
        if model.attention == "gqa":
            layers = jnp.maximum(model.num_layers, 1.0)
            sl = model.num_sliding_layers
            full = gqa_attention_block(hw_a, model, plan_a, mb, seqs, 0.0, tau)
            win = gqa_attention_block(
                hw_a, model, plan_a, mb, seqs, model.sliding_window_tokens, tau
            )
            attn = OpCost(
                safe_div(full.time_s * (layers - sl) + win.time_s * sl, layers)
            )  # per-layer average
        else:
            attn = mla_attention_block(hw_a, model, plan_a, mb, tau)
        ar = tp_all_reduce(hw_a, plan_a, seqs, d, tau)
        norms = elementwise_cost(hw_a, seqs * d, 8.0, tau)
        t_attn = attn.time_s + ar.time_s + norms.time_s
        dense = dense_ffn_block(
            hw_a, model, plan_a, seqs, model.ffn_intermediate, self.weight_dtype, tau
        )
        t_dense = t_attn + dense.time_s + ar.time_s

        # --- dispatch / combine -----------------------------------------------------------
        tokens = a_dev * b / m  # tokens entering the FFN pool per micro-batch
        hit = rank_hit_probability(ep_f, k, model.routing_groups, model.routing_topk_groups)
        n_dst = tpf * ep_f * hit
        x = cross_domain(hw_a, a_dev + f_dev)
        cb = get_format(self.comm_dtype).bytes_per_element

        def transfer(bytes_per_elem):
            send = b / m * n_dst * d * bytes_per_elem
            recv = safe_div(tokens * n_dst * d * bytes_per_elem, f_dev)
            return smooth_max2(
                p2p_cost(hw_a, send, x, tau).time_s, p2p_cost(hw_f, recv, x, tau).time_s, tau
            )

        t_disp = transfer(cb)
        t_comb = transfer(2.0)

        # --- experts on F -----------------------------------------------------------------
        routed = moe_layer_cost(
            hw_f,
            tokens,
            d,
            model.moe_intermediate,
            model.num_experts,
            k,
            tpf,
            ep_f,
            self.moe_dtype,
            gated=model.gated_mlp,
            tau=tau,
        )
        shared = dense_ffn_block(
            hw_f,
            model,
            plan_f,
            safe_div(tokens, f_dev),
            model.num_shared_experts * model.moe_intermediate,
            self.weight_dtype,
            tau,
        )
        shared = gated(shared, model.num_shared_experts)
        red = all_reduce_cost(hw_f, safe_div(tokens * k, ep_f) * d * cb, tpf, tau=tau)
        t_ffn = routed.time_s + shared.time_s + red.time_s

        stages = jnp.stack([t_attn, t_disp, t_ffn, t_comb])
        t_moe = afd_pipeline_time_s(stages, m, model.num_moe_layers, tau)
        t_dense_all = model.num_dense_layers * m * t_dense

        # --- embedding and LM head (whole batch of a replica, once per step) --------------
        rows = b * tpa
        vocab = model.vocab_size
        emb = embedding_cost(hw_a, rows, d, 2.0, tau)
        lm = gemm_cost(hw_a, rows, vocab / tpa, d, "bf16", tau, out_dtype="fp32")
        gather = all_gather_cost(hw_a, rows * vocab / tpa * 4.0, tpa, tau=tau)
        head = emb.time_s + lm.time_s + gather.time_s

        gpu = t_dense_all + t_moe + head
        tpot = smooth_max2(gpu, host_overhead_s(rows), tau)
        L = model.num_moe_layers
        return AFDStep(
            tpot_s=tpot,
            attention_s=L * m * t_attn,
            dispatch_s=L * m * t_disp,
            ffn_s=L * m * t_ffn,
            combine_s=L * m * t_comb,
            dense_s=t_dense_all,
            head_s=head,
        )

    def memory(self, hw: Hardware, model: ModelSpec, batch, context_tokens, tau: float = 0.0):
        """(attention-device, FFN-device) :class:`~diffperf.stages.MemoryUsage`."""
        del tau
        hw_a = self.attention_hw if self.attention_hw is not None else hw
        hw_f = self.ffn_hw if self.ffn_hw is not None else hw
        plan_a = self._attention_plan()
        tpa = jnp.maximum(self.attention_tp, 1.0)
        f_dev = jnp.maximum(self.ffn_devices, 1.0)
        tpf = jnp.clip(self.ffn_moe_tp, 1.0, f_dev)
        ep_f = f_dev / tpf
        m = jnp.maximum(self.microbatches, 1.0)
        wb = get_format(self.weight_dtype).bytes_per_element
        mb_ = get_format(self.moe_dtype).bytes_per_element
        expert = model.expert_param_count()
        # memory_usage with ep = moe_tp = 1 counts every expert on the device: take the
        # routed and shared experts back out (the router stays on A).
        full = memory_usage(hw_a, model, plan_a, decode_batch(batch * tpa, context_tokens))
        experts_on_a = model.num_moe_layers * (
            model.num_experts * expert * mb_ + model.num_shared_experts * expert / tpa * wb
        )
        mem_a = MemoryUsage(
            full.weight_bytes - experts_on_a,
            full.kv_cache_bytes,
            full.activation_bytes,
            full.capacity_bytes,
        )
        w_f = model.num_moe_layers * (
            model.num_experts / ep_f * expert / tpf * mb_ + model.num_shared_experts * expert * wb
        )
        tokens = self.attention_devices * batch / m
        assign = safe_div(tokens * model.experts_per_token, ep_f)
        act_f = 2.0 * assign * (model.hidden_size + 2.0 * model.moe_intermediate / tpf) * 2.0
        cap_f = hw_f.accel.hbm.capacity_bytes * hw_f.accel.usable_memory_fraction
        mem_f = MemoryUsage(w_f, jnp.zeros(()), act_f, cap_f)
        return mem_a, mem_f

    def metrics(
        self, hw: Hardware, model: ModelSpec, workload: Workload, tau: float = 0.0
    ) -> Metrics:
        """Steady-state serving metrics (equations in the module docstring)."""
        if not model.has_moe:
            raise ValueError(
                f"AFD needs an MoE model (it splits the experts off the attention devices); "
                f"{model.name} has no MoE layers"
            )
        w = workload
        hw_p = self.prefill_hw if self.prefill_hw is not None else hw
        cross = cross_domain(hw_p, self.devices())
        pool, mem_p = prefill_pool(
            hw_p,
            model,
            self.prefill_plan,
            self.prefill_instances,
            self.prefill_max_batch,
            self.max_num_tokens,
            w,
            jnp.maximum(self.attention_tp, 1.0),
            cross,
            tau,
        )
        ctx = w.isl_tokens + 0.5 * w.osl_tokens

        def tpot_fn(a, b):
            scheme, h, mdl, c = a
            st = scheme.decode_step(h, mdl, b, c, tau)
            return st.tpot_s, st

        units = jnp.maximum(self.instances * self.attention_devices, 1e-9)
        args = (self, hw, model, ctx)
        sol, st = solve_serving(tpot_fn, args, units, self.decode_batch, pool, w, tau)
        mem_a, mem_f = self.memory(hw, model, sol.batch, w.isl_tokens + w.osl_tokens)
        margin = jnp.minimum(
            safe_div(mem_p.margin_bytes, mem_p.capacity_bytes),
            jnp.minimum(
                safe_div(mem_a.margin_bytes, mem_a.capacity_bytes),
                safe_div(mem_f.margin_bytes, mem_f.capacity_bytes),
            ),
        )
        zero = jnp.zeros(())
        bd = Breakdown(
            attention_s=st.attention_s,
            dense_ffn_s=st.dense_s,
            moe_s=st.ffn_s,
            tp_comm_s=zero,
            moe_comm_s=st.dispatch_s + st.combine_s,
            pp_comm_s=zero,
            embed_lm_head_s=st.head_s,
            norm_s=zero,
            compute_s=zero,
            memory_s=zero,
        )
        step = StepResult(st.tpot_s, bd, mem_a, sol.batch, zero)
        return finish_metrics(
            workload=w,
            ttft_s=sol.ttft_s,
            ttft_pct_s=sol.ttft_pct_s,
            tpot_s=sol.tpot_s,
            tpot_pct_s=sol.tpot_s,
            throughput_tok_s=sol.rate_per_s * w.osl_tokens,
            devices=self.devices(),
            utilisation=sol.utilisation,
            memory_margin_frac=margin,
            decode_batch=sol.batch,
            decode_step=step,
        )
