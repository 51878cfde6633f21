"""ParallelPlan: how one model instance is laid out on devices.

Layout (TensorRT-LLM / SGLang conventions): a model instance spans ``pp`` pipeline stages;
each stage has ``tp * dp`` devices. Attention and dense FFN layers run ``dp`` data-parallel
replicas (attention DP), each tensor-parallel over ``tp`` devices. MoE layers use the same
``tp * dp`` devices as ``moe_tp`` (expert tensor parallel) × ``ep`` (expert parallel), so
``moe_tp * ep == tp * dp``. Devices per instance: ``tp * dp * pp``.

Degrees are float leaves (relaxable in search); :func:`check_plan` validates concrete plans.
"""

import math

import equinox as eqx
import numpy as np

from .._dtypes import get_format
from .._numerics import as_float_array
from .._types import FloatScalarLike
from ..model._spec import ModelSpec


class PlanError(ValueError):
    """A parallel plan that cannot run this model (names the field and value)."""


class ParallelPlan(eqx.Module):
    """Parallel degrees (float leaves) and numeric formats (static).

    - ``tp``: tensor parallel degree of attention/dense layers in each replica.
    - ``pp``: pipeline stages.
    - ``dp``: attention data-parallel replicas per stage.
    - ``ep``: expert-parallel degree of MoE layers.
    - ``moe_tp``: tensor-parallel degree inside each expert.
    - ``redundant_experts``: extra replicas of hot experts placed by an expert load balancer
      (DeepSeek EPLB: 32 redundant experts for EP144 decode), so ``ep`` divides
      ``num_experts + redundant_experts``.
    - ``weight_dtype``: attention/dense weights and GEMMs; ``moe_dtype``: expert weights and
      grouped GEMMs; ``kv_dtype``: KV cache; ``comm_dtype``: activations sent between devices;
      ``attention_dtype``: precision of the attention math (``"fp8"`` for FP8 FlashAttention /
      FMHA kernels over an fp8 KV cache).
    - ``two_batch_overlap`` (static): split each step into two micro-batches so that one's
      communication overlaps the other's compute (DeepSeek's dual micro-batch, SGLang TBO).
    """

    tp: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    pp: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    dp: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    ep: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    moe_tp: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    redundant_experts: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    weight_dtype: str = eqx.field(static=True, default="bf16")
    moe_dtype: str = eqx.field(static=True, default="bf16")
    kv_dtype: str = eqx.field(static=True, default="bf16")
    comm_dtype: str = eqx.field(static=True, default="bf16")
    attention_dtype: str = eqx.field(static=True, default="bf16")
    two_batch_overlap: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        for field in ("weight_dtype", "moe_dtype", "kv_dtype", "comm_dtype", "attention_dtype"):
            try:
                get_format(getattr(self, field), field)
            except ValueError as e:
                raise PlanError(str(e)) from None

    @property
    def devices(self):
        """Devices of one model instance: ``tp * dp * pp``."""
        return self.tp * self.dp * self.pp


def make_plan(
    model: ModelSpec,
    *,
    tp: int = 1,
    pp: int = 1,
    dp: int = 1,
    ep: int | None = None,
    moe_tp: int | None = None,
    dtype: str | None = None,
    moe_dtype: str | None = None,
    kv_dtype: str | None = None,
    comm_dtype: str = "bf16",
    two_batch_overlap: bool = False,
    redundant_experts: int = 0,
    attention_dtype: str = "bf16",
) -> ParallelPlan:
    """Build a plan with defaults filled in and check it against the model.

    Defaults: ``ep = tp * dp / moe_tp`` (all MoE devices hold distinct experts), ``moe_tp = 1``;
    ``dtype`` and ``moe_dtype`` default to the format of the released weights
    (``model.default_dtype``), ``kv_dtype`` to bf16 (fp8 for models released in fp8).
    """
    group = tp * dp
    if not model.has_moe:
        ep = 1 if ep is None else ep
        moe_tp = 1 if moe_tp is None else moe_tp
    if moe_tp is None:
        moe_tp = 1 if ep is None else max(group // max(ep, 1), 1)
    if ep is None:
        ep = max(group // max(moe_tp, 1), 1)
    wd = dtype or model.default_dtype
    md = moe_dtype or (dtype if dtype else model.default_dtype)
    kd = kv_dtype or "bf16"
    plan = ParallelPlan(
        tp=tp,
        pp=pp,
        dp=dp,
        ep=ep,
        moe_tp=moe_tp,
        weight_dtype=wd,
        moe_dtype=md,
        kv_dtype=kd,
        comm_dtype=comm_dtype,
        two_batch_overlap=two_batch_overlap,
        redundant_experts=redundant_experts,
        attention_dtype=attention_dtype,
    )
    check_plan(model, plan)
    return plan


def _int_field(name: str, value) -> int:
    v = np.asarray(value)
    if v.ndim != 0:
        raise PlanError(f"plan.{name} must be a scalar, got shape {v.shape}")
    x = float(v)
    if not math.isfinite(x) or x < 1 or abs(x - round(x)) > 1e-9:
        raise PlanError(f"plan.{name} = {x:g} must be a positive integer")
    return int(round(x))


def check_plan(model: ModelSpec, plan: ParallelPlan) -> None:
    """Validate a concrete plan against a model; raises :class:`PlanError` naming the field.

    Rules: every degree a positive integer; ``tp`` divides the attention heads; for GQA, ``tp``
    divides the KV heads or is a multiple of them (KV heads are then replicated); for MoE
    models ``moe_tp * ep == tp * dp``, ``ep`` divides the experts and ``moe_tp`` divides the
    expert width; ``pp`` at most the number of layers.
    """
    tp, pp, dp = (_int_field(n, getattr(plan, n)) for n in ("tp", "pp", "dp"))
    ep, moe_tp = _int_field("ep", plan.ep), _int_field("moe_tp", plan.moe_tp)
    heads = int(round(float(model.num_heads)))
    if heads % tp:
        raise PlanError(f"plan.tp = {tp} does not divide {model.name}'s {heads} attention heads")
    if model.attention == "gqa":
        kvh = int(round(float(model.num_kv_heads)))
        if kvh % tp and tp % kvh:
            raise PlanError(
                f"plan.tp = {tp} neither divides nor is a multiple of {model.name}'s {kvh} KV heads"
            )
    layers = int(round(float(model.num_layers)))
    if pp > layers:
        raise PlanError(f"plan.pp = {pp} exceeds {model.name}'s {layers} layers")
    if model.has_moe:
        if moe_tp * ep != tp * dp:
            raise PlanError(
                f"plan.moe_tp * plan.ep = {moe_tp} * {ep} must equal tp * dp = {tp} * {dp} "
                f"(MoE layers run on the attention devices)"
            )
        redundant = float(plan.redundant_experts)
        if redundant < 0 or redundant != round(redundant):
            raise PlanError(f"plan.redundant_experts = {redundant:g} must be an integer >= 0")
        experts = int(round(float(model.num_experts))) + int(redundant)
        if experts % ep:
            raise PlanError(
                f"plan.ep = {ep} does not divide {model.name}'s {experts} experts"
                + (f" (incl. {int(redundant)} redundant)" if redundant else "")
            )
        width = int(round(float(model.moe_intermediate)))
        if width % moe_tp:
            raise PlanError(
                f"plan.moe_tp = {moe_tp} does not divide the expert width {width} of {model.name}"
            )
    elif ep != 1 or moe_tp != 1:
        raise PlanError(f"plan.ep = {ep}, moe_tp = {moe_tp}: {model.name} has no MoE layers")
