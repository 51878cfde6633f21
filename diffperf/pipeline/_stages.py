"""Stage types of a multi-stage inference pipeline: one pure cost function each.

Every stage answers one question: on one *instance* (``devices_per_instance`` devices of its
engine), how long does a batch of ``B`` requests take, and what does it use? The answer is a
:class:`StageCost`:

- ``service_s``: time the instance is busy with the batch; a request's residence in the
  stage's engine (for continuous batching it is the lifetime of a sequence in a batch of B).
- ``join_s``: scheduling granularity, the longest a newly arrived request waits for the
  instance to accept it while it is busy (one iteration for LLM engines with iteration-level
  scheduling; the whole service for run-to-completion stages).
- ``first_output_s``: time from the start of service to the first *answer* token (decode
  and reasoning stages; the whole service for the others; prefill emits its first token at
  its end).
- ``idle_s``: time a request spends in the stage without occupying the instance (tool waits
  of an agent loop); adds to latency, not to load.
- ``memory_s``: memory-bound leg of ``service_s`` (for memory-bandwidth contention);
  ``host_bytes``: bytes the batch reads from its host's DRAM (KV retrieval from host/CXL).
- ``used_bytes`` / ``capacity_bytes``: memory per device against its usable capacity.

LLM stages reuse :func:`diffperf.stages.iteration` (the full step model of the plan).
Decode at batch ``B`` over ``n`` tokens takes ``n · step(B, c̄)`` at the mean context
``c̄ = isl + n/2``: attention reads grow linearly with context, so the mean step equals the
step at the mean context wherever the step time is affine in context (memory-bound decode).
"""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float

from .._numerics import as_float_array, safe_div
from .._types import FloatScalarLike
from ..deploy import kv_transfer_bytes
from ..hardware import Hardware
from ..model import ModelSpec
from ..ops import roofline_cost
from ..stages import (
    ParallelPlan,
    decode_batch,
    iteration,
    memory_usage,
    prefill_batch,
)
from ._kv_tiers import KVTier, kv_fetch_s
from ._vector_search import VectorIndex, index_memory_bytes, vector_search_cost


class StageCost(eqx.Module):
    """What one batch costs one instance of a stage (fields in the module docstring)."""

    service_s: FloatScalarLike = eqx.field(converter=as_float_array)
    join_s: FloatScalarLike = eqx.field(converter=as_float_array)
    first_output_s: FloatScalarLike = eqx.field(converter=as_float_array)
    idle_s: FloatScalarLike = eqx.field(converter=as_float_array)
    memory_s: FloatScalarLike = eqx.field(converter=as_float_array)
    host_bytes: FloatScalarLike = eqx.field(converter=as_float_array)
    used_bytes: FloatScalarLike = eqx.field(converter=as_float_array)
    capacity_bytes: FloatScalarLike = eqx.field(converter=as_float_array)


def _usable(hw: Hardware):
    return hw.accel.hbm.capacity_bytes * hw.accel.usable_memory_fraction


class AbstractStage(eqx.Module):
    """A pipeline stage type: ``cost(hw, tiers, batch, tau) -> StageCost``."""

    @abc.abstractmethod
    def cost(self, hw: Hardware, tiers: tuple[KVTier, ...], batch, tau: float) -> StageCost:
        """Cost of one batch of ``batch`` requests on one instance on ``hw``."""

    @property
    def devices_per_instance(self):
        """Devices one instance of this stage occupies (float)."""
        return jnp.asarray(1.0)

    @property
    def kind(self) -> str:
        return type(self).__name__


class Prefill(AbstractStage):
    """LLM prefill of ``input_tokens`` new tokens after ``cached_tokens`` reused ones."""

    model: ModelSpec
    plan: ParallelPlan
    input_tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    cached_tokens: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)

    def cost(self, hw, tiers, batch, tau):
        del tiers
        r = iteration(
            hw,
            self.model,
            self.plan,
            prefill_batch(batch, self.input_tokens, self.cached_tokens),
            tau,
        )
        t = r.latency_s
        return StageCost(
            t, t, t, 0.0, r.breakdown.memory_s, 0.0, r.memory.total_bytes, r.memory.capacity_bytes
        )

    @property
    def devices_per_instance(self):
        return self.plan.devices


class Decode(AbstractStage):
    """LLM decode of ``thinking_tokens`` hidden reasoning tokens then ``output_tokens``
    answer tokens, after a prompt of ``input_tokens`` (iteration-level batching)."""

    model: ModelSpec
    plan: ParallelPlan
    input_tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    output_tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    thinking_tokens: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)

    def cost(self, hw, tiers, batch, tau):
        del tiers
        n = self.thinking_tokens + self.output_tokens
        ctx = self.input_tokens + 0.5 * n
        r = iteration(hw, self.model, self.plan, decode_batch(batch, ctx), tau)
        step = r.latency_s
        mem = memory_usage(hw, self.model, self.plan, decode_batch(batch, self.input_tokens + n))
        return StageCost(
            n * step,
            step,
            (self.thinking_tokens + 1.0) * step,
            0.0,
            n * r.breakdown.memory_s,
            0.0,
            mem.total_bytes,
            mem.capacity_bytes,
        )

    @property
    def devices_per_instance(self):
        return self.plan.devices


class AgentLoop(AbstractStage):
    """``calls`` LLM calls with a tool wait between consecutive calls.

    Call ``i`` (0-based) prefills its new tokens (the prompt for the first call, the tool
    result of ``tool_tokens`` for the others) on top of the cached conversation, then decodes
    ``output_tokens``. Costs use the mean call: new tokens ``(isl + (n-1) t) / n``, cached
    tokens ``((n-1)/n) isl + ((n-1)/2)(o + t)``, decode context at the mean conversation
    length ``isl + (n/2)(o + t)``. The tool waits ``(n-1) · tool_wait_s`` add to latency and
    leave the engine free (its slots serve other requests meanwhile).
    """

    model: ModelSpec
    plan: ParallelPlan
    calls: FloatScalarLike = eqx.field(converter=as_float_array)
    input_tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    output_tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    tool_tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    tool_wait_s: FloatScalarLike = eqx.field(converter=as_float_array)

    def cost(self, hw, tiers, batch, tau):
        del tiers
        n, o, t = self.calls, self.output_tokens, self.tool_tokens
        new = safe_div(self.input_tokens + (n - 1.0) * t, n)
        cached = safe_div(n - 1.0, n) * self.input_tokens + 0.5 * (n - 1.0) * (o + t)
        pre = iteration(hw, self.model, self.plan, prefill_batch(batch, new, cached), tau)
        ctx = self.input_tokens + 0.5 * n * (o + t)
        dec = iteration(hw, self.model, self.plan, decode_batch(batch, ctx), tau)
        per_call = pre.latency_s + o * dec.latency_s
        mem = memory_usage(
            hw, self.model, self.plan, decode_batch(batch, self.input_tokens + n * (o + t))
        )
        mem_s = n * (pre.breakdown.memory_s + o * dec.breakdown.memory_s)
        first = (n - 1.0) * per_call + pre.latency_s + dec.latency_s
        return StageCost(
            n * per_call,
            dec.latency_s,
            first,
            (n - 1.0) * self.tool_wait_s,
            mem_s,
            0.0,
            mem.total_bytes,
            mem.capacity_bytes,
        )

    @property
    def devices_per_instance(self):
        return self.plan.devices


class Encode(AbstractStage):
    """One forward pass of a small model over ``tokens`` per request: an embedding model
    (``role="embed"``) or a router/classifier (``role="router"``). Encoders attend
    bidirectionally; the step model counts causal attention, which halves the attention
    FLOPs of short inputs (a few percent of these small models' time)."""

    model: ModelSpec
    plan: ParallelPlan
    tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    role: str = eqx.field(static=True, default="embed")

    def cost(self, hw, tiers, batch, tau):
        del tiers
        r = iteration(hw, self.model, self.plan, prefill_batch(batch, self.tokens), tau)
        t = r.latency_s
        return StageCost(
            t, t, t, 0.0, r.breakdown.memory_s, 0.0, r.memory.total_bytes, r.memory.capacity_bytes
        )

    @property
    def devices_per_instance(self):
        return self.plan.devices


class VectorSearch(AbstractStage):
    """Approximate/exact nearest-neighbour search of each request's query embedding(s)
    (``queries_per_request``) in ``index`` on one device."""

    index: VectorIndex
    queries_per_request: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)

    def cost(self, hw, tiers, batch, tau):
        del tiers
        c = vector_search_cost(hw, self.index, batch * self.queries_per_request, tau)
        return StageCost(
            c.time_s,
            c.time_s,
            c.time_s,
            0.0,
            c.memory_s,
            0.0,
            index_memory_bytes(self.index),
            _usable(hw),
        )


class KVRetrieval(AbstractStage):
    """Bring the KV cache of a ``prefix_tokens``-token prefix into HBM: fetch it from the
    memory tier that holds it (``hit_rates[i]`` for ``tiers[i]``, exclusive) or recompute
    it by a prefill (misses, and every request when ``retrieve_weight = 0``).

    ``T(B) = w · T_fetch(B) + T_prefill(B (1 - w Σ h), prefix)``; ``w ∈ [0, 1]`` is the
    retrieve-vs-recompute choice (1 = retrieve every hit), relaxed as a float so a search can
    move it through a sigmoid. Host-memory tiers (``host_dram``, ``cxl``) read
    ``host_bytes`` from the host's DRAM, which a co-located CPU stage contends for.
    """

    model: ModelSpec
    plan: ParallelPlan
    prefix_tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    hit_rates: Float[ArrayLike, " tier"] = eqx.field(converter=as_float_array)
    tiers: tuple = eqx.field(static=True)
    retrieve_weight: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)

    def bytes_per_request(self):
        """KV bytes of one prefix (all layers, the plan's KV format)."""
        return kv_transfer_bytes(self.model, self.prefix_tokens, self.plan.kv_dtype)

    def _hits(self, tiers: tuple[KVTier, ...]):
        names = [t.name for t in tiers]
        idx = [names.index(n) for n in self.tiers]
        return tuple(tiers[i] for i in idx)

    def cost(self, hw, tiers, batch, tau):
        sel = self._hits(tiers)
        hits = [self.hit_rates[i] for i in range(len(self.tiers))]
        w = jnp.clip(self.retrieve_weight, 0.0, 1.0)
        # bytes cross each device's links once per device of the instance (TP shards KV)
        per_dev = safe_div(self.bytes_per_request(), self.plan.devices)
        fetch = kv_fetch_s(sel, hits, batch, per_dev)
        total_hit = sum(hits, jnp.asarray(0.0))
        miss_batch = batch * (1.0 - w * total_hit)
        rec = iteration(
            hw, self.model, self.plan, prefill_batch(miss_batch, self.prefix_tokens), tau
        )
        rec_s = jnp.where(miss_batch > 0, rec.latency_s, 0.0)
        t = w * fetch + rec_s
        host = sum(
            (h for h, n in zip(hits, self.tiers) if n in ("host_dram", "cxl")), jnp.asarray(0.0)
        )
        host_bytes = w * host * batch * self.bytes_per_request()
        mem = memory_usage(hw, self.model, self.plan, prefill_batch(batch, self.prefix_tokens))
        return StageCost(
            t,
            t,
            t,
            0.0,
            jnp.where(miss_batch > 0, rec.breakdown.memory_s, 0.0),
            host_bytes,
            mem.total_bytes,
            mem.capacity_bytes,
        )

    @property
    def devices_per_instance(self):
        return self.plan.devices


class CPUWork(AbstractStage):
    """Pre/post-processing (tokenisation, chunking, re-ranking glue, detokenisation): a
    roofline of ``flop_per_request`` and ``bytes_per_request`` at the device's fp32 peak plus
    ``per_request_s`` of serial time per request spread over ``parallel_lanes`` lanes (cores)."""

    flop_per_request: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    bytes_per_request: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    per_request_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    parallel_lanes: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)

    def cost(self, hw, tiers, batch, tau):
        del tiers
        e = hw.accel.eff.gemm
        c = roofline_cost(
            batch * self.flop_per_request,
            batch * self.bytes_per_request,
            hw.accel.peak_fp32_flop_per_s,
            hw.accel.hbm.bw_bytes_per_s,
            e.compute_eff_fp32,
            e.mem_eff,
            0.0,
            tau,
        )
        lanes = jnp.maximum(self.parallel_lanes, 1.0)
        serial = self.per_request_s * jnp.maximum(safe_div(batch, lanes), 1.0)
        t = c.time_s + serial
        return StageCost(t, t, t, 0.0, c.memory_s, 0.0, 0.0, _usable(hw))


STAGE_TYPES = {
    "prefill": Prefill,
    "decode": Decode,
    "agent_loop": AgentLoop,
    "encode": Encode,
    "vector_search": VectorSearch,
    "kv_retrieval": KVRetrieval,
    "cpu": CPUWork,
}
