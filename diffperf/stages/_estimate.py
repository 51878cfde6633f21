"""``estimate``: one request batch served start to finish (prefill, then OSL decode steps).

No queueing here (that is the serving layer's job): TTFT is the prefill latency of the whole
batch, TPOT the mean decode-step latency over the generated contexts.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._numerics import as_float_array, safe_div
from .._types import FloatScalarLike
from ..hardware import Hardware
from ..model._spec import ModelSpec
from ._plan import ParallelPlan
from ._step import MemoryUsage, StepResult, decode_batch, iteration, prefill_batch


# 3-point Gauss-Legendre nodes/weights on [0, 1]: exact for decode latency that is a
# polynomial of degree <= 5 in the context length (it is affine in the memory-bound limit).
_GL_NODES = np.array([0.5 - np.sqrt(15.0) / 10.0, 0.5, 0.5 + np.sqrt(15.0) / 10.0])
_GL_WEIGHTS = np.array([5.0, 8.0, 5.0]) / 18.0


class Estimate(eqx.Module):
    """Result of :func:`estimate` (all SI units).

    ``throughput_tok_s`` is the decode-phase output rate of the instance (batch / TPOT);
    ``e2e_throughput_tok_s`` counts the prefill too (batch * OSL / request latency).
    ``memory`` is taken at the end of generation (largest KV cache).
    """

    prefill: StepResult  # one prefill iteration
    decode: StepResult  # at the mean context (ISL + OSL/2)
    prefill_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    ttft_s: FloatScalarLike = eqx.field(converter=as_float_array)
    tpot_s: FloatScalarLike = eqx.field(converter=as_float_array)
    e2e_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    throughput_tok_s: FloatScalarLike = eqx.field(converter=as_float_array)
    throughput_tok_s_per_device: FloatScalarLike = eqx.field(converter=as_float_array)
    throughput_tok_s_per_user: FloatScalarLike = eqx.field(converter=as_float_array)
    e2e_throughput_tok_s: FloatScalarLike = eqx.field(converter=as_float_array)
    devices: FloatScalarLike = eqx.field(converter=as_float_array)
    memory: MemoryUsage


def mean_tpot_s(hw, model, plan, batch, isl, osl, tau: float = 0.0):
    """Mean decode-step latency over contexts ``isl .. isl + osl`` (3-point Gauss-Legendre)."""
    nodes = jnp.asarray(_GL_NODES)
    weights = jnp.asarray(_GL_WEIGHTS)

    def step(x):
        return iteration(hw, model, plan, decode_batch(batch, isl + x * osl), tau).latency_s

    return jnp.sum(weights * jax.vmap(step)(nodes))


def estimate(
    hw: Hardware,
    model: ModelSpec,
    plan: ParallelPlan,
    batch,
    isl,
    osl,
    max_num_tokens=8192.0,
    tau: float = 0.0,
) -> Estimate:
    """Serve ``batch`` requests of ``isl`` prompt and ``osl`` output tokens on one instance.

    Prefill runs in iterations of at most ``max_num_tokens`` new tokens per attention replica
    (the engine's token budget, TensorRT-LLM's ``max_num_tokens`` default 8192):
    ``n = max(1, batch·isl / (dp·max_num_tokens))`` iterations of ``batch/n`` prompts each
    (continuous, so the count stays differentiable). Requests finish prefill uniformly over
    the ``n`` iterations, so the mean ``ttft = (n + 1)/2 · t_iter``; the whole batch's
    ``prefill_latency_s = n · t_iter``. ``tpot`` = mean decode-step latency over the contexts
    ``isl .. isl+osl``; ``e2e = prefill_latency + (osl - 1)·tpot``; decode throughput
    ``batch / tpot``.
    """
    batch = jnp.asarray(batch, dtype=float)
    isl = jnp.asarray(isl, dtype=float)
    osl = jnp.asarray(osl, dtype=float)
    n_iter = jnp.maximum(safe_div(batch * isl, plan.dp * max_num_tokens), 1.0)
    pre = iteration(hw, model, plan, prefill_batch(batch / n_iter, isl), tau)
    dec = iteration(hw, model, plan, decode_batch(batch, isl + 0.5 * osl), tau)
    tpot = mean_tpot_s(hw, model, plan, batch, isl, osl, tau)
    prefill_latency = n_iter * pre.latency_s
    ttft = 0.5 * (n_iter + 1.0) * pre.latency_s
    e2e = prefill_latency + jnp.maximum(osl - 1.0, 0.0) * tpot
    thr = safe_div(batch, tpot)
    devices = plan.devices
    mem_end = iteration(hw, model, plan, decode_batch(batch, isl + osl), tau).memory
    mem_pre = pre.memory
    # worst of the prefill peak (activations) and the end of generation (KV cache)
    mem = MemoryUsage(
        mem_end.weight_bytes,
        jnp.maximum(mem_end.kv_cache_bytes, mem_pre.kv_cache_bytes),
        jnp.maximum(mem_end.activation_bytes, mem_pre.activation_bytes),
        mem_end.capacity_bytes,
    )
    return Estimate(
        prefill=pre,
        decode=dec,
        prefill_latency_s=prefill_latency,
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_latency_s=e2e,
        throughput_tok_s=thr,
        throughput_tok_s_per_device=safe_div(thr, devices),
        throughput_tok_s_per_user=safe_div(1.0, tpot),
        e2e_throughput_tok_s=safe_div(batch * osl, e2e),
        devices=devices,
        memory=mem,
    )
