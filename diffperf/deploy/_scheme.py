"""The serving-scheme interface and shared helpers for building Metrics."""

import abc

import equinox as eqx
import jax.numpy as jnp

from .._numerics import safe_div, softplus_penalty
from ..hardware import Hardware
from ..model import ModelSpec
from ..stages import StepResult
from ._metrics import Metrics
from ._workload import Workload


class AbstractServingScheme(eqx.Module):
    """A way of serving a model on a pool of devices (the ``deploy`` argument).

    Concrete schemes hold their deployment choices as float leaves (instance counts, batch
    limits, splits) plus static structure, and implement :meth:`metrics`.
    """

    @abc.abstractmethod
    def metrics(
        self, hw: Hardware, model: ModelSpec, workload: Workload, tau: float = 0.0
    ) -> Metrics:
        """Steady-state serving metrics of this deployment for ``workload``."""
        raise NotImplementedError

    @abc.abstractmethod
    def devices(self):
        """Devices the deployment uses (float)."""
        raise NotImplementedError


def evaluate(
    hw: Hardware,
    model: ModelSpec,
    deploy: AbstractServingScheme,
    workload: Workload,
    tau: float = 0.0,
) -> Metrics:
    """Serving metrics of ``deploy`` (argument order as everywhere: hw, model, deploy, workload)."""
    return deploy.metrics(hw, model, workload, tau)


def finish_metrics(
    *,
    workload: Workload,
    ttft_s,
    ttft_pct_s,
    tpot_s,
    tpot_pct_s,
    throughput_tok_s,
    devices,
    utilisation,
    memory_margin_frac,
    decode_batch,
    decode_step: StepResult | None = None,
) -> Metrics:
    """Assemble :class:`Metrics` with the feasibility flags and the soft penalty.

    ``penalty = softplus(ttft/SLO - 1) + softplus(tpot/SLO - 1) + softplus(-margin)``
    ``+ softplus(ρ - 1)`` (each unit-free, sharpness 20), so it is ~0 for comfortably feasible
    designs and grows smoothly with the violation.
    """
    slo = workload.slo
    osl = workload.osl_tokens
    request_latency = ttft_s + jnp.maximum(osl - 1.0, 0.0) * tpot_s
    mem_ok = jnp.where(memory_margin_frac >= 0, 1.0, 0.0)
    rate_ok = jnp.where(utilisation < 1.0, 1.0, 0.0)
    ttft_ok = jnp.where(ttft_pct_s <= slo.ttft_s, 1.0, 0.0)
    tpot_ok = jnp.where(tpot_pct_s <= slo.tpot_s, 1.0, 0.0)
    penalty = (
        softplus_penalty(ttft_pct_s, slo.ttft_s)
        + softplus_penalty(tpot_pct_s, slo.tpot_s)
        + softplus_penalty(1.0 - memory_margin_frac, 1.0)
        + softplus_penalty(utilisation, 1.0)
    )
    if decode_step is not None:
        bd = decode_step.breakdown
        attn, ffn = bd.attention_s, bd.dense_ffn_s + bd.moe_s
        comm = bd.tp_comm_s + bd.moe_comm_s + bd.pp_comm_s
        other = bd.embed_lm_head_s + bd.norm_s
    else:
        attn = ffn = comm = other = jnp.zeros(())
    return Metrics(
        ttft_s=ttft_s,
        ttft_pct_s=ttft_pct_s,
        tpot_s=tpot_s,
        tpot_pct_s=tpot_pct_s,
        request_latency_s=request_latency,
        throughput_tok_s=throughput_tok_s,
        throughput_tok_s_per_device=safe_div(throughput_tok_s, devices),
        throughput_tok_s_per_user=safe_div(1.0, tpot_s),
        input_throughput_tok_s=safe_div(throughput_tok_s * workload.isl_tokens, osl),
        devices=devices,
        utilisation=utilisation,
        memory_margin_frac=memory_margin_frac,
        decode_batch=decode_batch,
        memory_ok=mem_ok,
        slo_ttft_ok=ttft_ok,
        slo_tpot_ok=tpot_ok,
        rate_ok=rate_ok,
        feasible=mem_ok * rate_ok * ttft_ok * tpot_ok,
        penalty=penalty,
        breakdown_attention_s=attn,
        breakdown_ffn_s=ffn,
        breakdown_comm_s=comm,
        breakdown_other_s=other,
    )
