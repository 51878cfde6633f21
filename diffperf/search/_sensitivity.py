"""Sensitivity: elasticities d log(metric) / d log(parameter), and vmapped 1-D / 2-D sweeps.

A *design point* is ``(hw, model, deploy, workload)`` as everywhere else. Its numeric leaves are
named by their pytree path under one of four roots: ``hardware.`` (e.g.
``hardware.accel.hbm.bw_bytes_per_s``, ``hardware.accel.eff.gemm.<param>``),
``deployment.`` (``deployment.max_batch``, ``deployment.plan.tp``), ``workload.``
(``workload.isl_tokens``, ``workload.slo.tpot_s``) and ``model.`` (``model.hidden_size``).
``scale.<resource>`` names a unit-free factor applied to a group of hardware leaves
(:data:`RESOURCES`: ``hbm_bw``, ``hbm_capacity``, ``flops`` (every tensor-core peak),
``scaleup_bw``, ``scaleout_bw``).

Elasticity ``e_i = d log y / d log x_i = (x_i / y) dy/dx_i`` is unit-free: a 1% larger ``x_i``
changes ``y`` by about ``e_i`` %. All of them come from ONE reverse-mode gradient. A resource's
elasticity is the sum over its leaves (scaling the group by ``s`` moves every leaf by
``d log s``).

Metrics are those of :class:`diffperf.deploy.Metrics` (``ttft_s``, ``tpot_pct_s``,
``throughput_tok_s_per_device``, ...). Besides the serving schemes, :class:`StaticBatch` serves
one batch of requests start to finish with no queueing (:func:`diffperf.stages.estimate`): the
setting of roofline-style platform studies (GenZ, LLM-Viewer), used by the projection.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._hardware_names import canonical_resource
from .._numerics import as_float_array, safe_div
from .._types import FloatScalarLike
from ..deploy import METRIC_KEYS, AbstractServingScheme, Metrics, Workload, finish_metrics
from ..hardware import Hardware
from ..model import ModelSpec
from ..stages import ParallelPlan, estimate


ROOTS = ("hardware", "deployment", "workload", "model")

# resource -> (hardware leaf paths scaled together, display unit, SI per display unit)
RESOURCES: dict[str, tuple[tuple[str, ...], str, float]] = {
    "hbm_bw": (("accel.hbm.bw_bytes_per_s",), "TB/s", 1e12),
    "hbm_capacity": (("accel.hbm.capacity_bytes",), "GB", 1e9),
    "flops": (
        (
            "accel.peak_bf16_flop_per_s",
            "accel.peak_fp8_flop_per_s",
            "accel.peak_fp4_flop_per_s",
            "accel.peak_int8_flop_per_s",
            "accel.peak_fp32_flop_per_s",
        ),
        "PFLOP/s",
        1e15,
    ),
    "scaleup_bw": (("fabric.scaleup_bw_bytes_per_s",), "GB/s", 1e9),
    "scaleout_bw": (("fabric.scaleout_bw_bytes_per_s",), "GB/s", 1e9),
}

METRICS = METRIC_KEYS


class SensitivityError(ValueError):
    """An unknown parameter or metric name, or a value out of range (names it)."""


class StaticBatch(AbstractServingScheme):
    """One batch of ``batch`` requests served start to finish on one instance, no queueing.

    TTFT and TPOT are those of :func:`diffperf.stages.estimate` (chunked prefill of the whole
    batch in ``max_num_tokens`` iterations, then the mean decode step over the generated
    contexts); the SLO statistic is ignored (there is no queueing distribution: every
    percentile equals the mean). ``throughput_tok_s`` = batch / TPOT. Prefix hits are ignored
    (the whole prompt is prefilled). ``memory_margin_frac`` = (usable capacity - weights - KV
    at the end of generation - peak activations) / usable capacity.
    """

    plan: ParallelPlan
    batch: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    max_num_tokens: FloatScalarLike = eqx.field(converter=as_float_array, default=8192.0)

    def devices(self):
        return self.plan.devices

    def metrics(
        self, hw: Hardware, model: ModelSpec, workload: Workload, tau: float = 0.0
    ) -> Metrics:
        est = estimate(
            hw,
            model,
            self.plan,
            self.batch,
            workload.isl_tokens,
            workload.osl_tokens,
            self.max_num_tokens,
            tau,
        )
        mem = est.memory
        margin = safe_div(mem.capacity_bytes - mem.total_bytes, mem.capacity_bytes)
        return finish_metrics(
            workload=workload,
            ttft_s=est.ttft_s,
            ttft_pct_s=est.ttft_s,
            tpot_s=est.tpot_s,
            tpot_pct_s=est.tpot_s,
            throughput_tok_s=est.throughput_tok_s,
            devices=est.devices,
            utilisation=jnp.zeros(()),
            memory_margin_frac=margin,
            decode_batch=self.batch,
            decode_step=est.decode,
        )


# --------------------------------------------------------------------------------------------
# naming and setting leaves
# --------------------------------------------------------------------------------------------


class Point(eqx.Module):
    """The four pytrees of a design point, under the names of :data:`ROOTS`."""

    hardware: Hardware
    deployment: AbstractServingScheme
    workload: Workload
    model: ModelSpec


def _path_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".")


def named_leaves(point: Point) -> dict[str, jax.Array]:
    """``{name: leaf}`` for every float leaf of the point (names as in the module docstring)."""
    params = eqx.filter(point, eqx.is_inexact_array)
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {_path_name(p): leaf for p, leaf in flat}


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise SensitivityError(f"metric = {metric!r} is not a metric; metrics: {list(METRICS)}")
    return metric


def resolve_name(point: Point, name: str) -> str:
    """Canonical leaf name for a user-given one (``scale.*`` names pass through).

    Accepts the full name, or for ``deployment.`` a plan degree without ``plan.``
    (``deployment.tp`` -> ``deployment.plan.tp``). Raises :class:`SensitivityError` listing the
    names of that root.
    """
    name = str(name).strip()
    if name.startswith("scale."):
        name = "scale." + canonical_resource(name[len("scale.") :])
        if name[len("scale.") :] not in RESOURCES:
            raise SensitivityError(
                f"parameter {name!r}: unknown resource; resources: "
                f"{', '.join('scale.' + r for r in RESOURCES)}"
            )
        return name
    names = named_leaves(point)
    if name in names:
        return name
    root, _, rest = name.partition(".")
    for cand in (
        f"{root}.plan.{rest}",
        f"{root}.{rest}_s",
        f"{root}.slo.{rest}",
        f"{root}.slo.{rest}_s",
    ):
        if cand in names:
            return cand
    if root not in ROOTS:
        raise SensitivityError(
            f"parameter {name!r} must start with one of "
            f"{', '.join(r + '.' for r in ROOTS)} or scale."
        )
    same = sorted(n for n in names if n.startswith(root + "."))
    raise SensitivityError(f"parameter {name!r} is not a float leaf; {root} leaves: {same}")


def set_values(point: Point, values: dict) -> Point:
    """A copy of ``point`` with named leaves replaced (or, for ``scale.*``, multiplied).

    Values may be tracers (inside ``vmap``/``grad``). Names must be canonical
    (:func:`resolve_name`).
    """
    params, static = eqx.partition(point, eqx.is_inexact_array)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    index = {_path_name(p): i for i, (p, _) in enumerate(flat)}
    leaves = [leaf for _, leaf in flat]
    for name, v in values.items():
        if name.startswith("scale."):
            for sub in RESOURCES[name[len("scale.") :]][0]:
                i = index["hardware." + sub]
                leaves[i] = leaves[i] * jnp.asarray(v, dtype=float)
        else:
            leaves[index[name]] = jnp.broadcast_to(jnp.asarray(v, dtype=float), ())
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)


def point_metrics(point: Point, tau: float = 0.0) -> Metrics:
    """Serving metrics of a design point."""
    return point.deployment.metrics(point.hardware, point.model, point.workload, tau)


# --------------------------------------------------------------------------------------------
# elasticities
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """Elasticities of one metric at one design point (plain numpy, for reports).

    ``names``/``values``/``elasticities``: every float leaf of the selected roots (value in SI);
    ``resources``: resource name -> elasticity of the group (sum of its leaves').
    """

    metric: str
    metric_value: float
    names: tuple[str, ...]
    values: np.ndarray
    elasticities: np.ndarray
    resources: dict

    def top(self, k: int = 15) -> list[tuple[str, float, float]]:
        """The ``k`` largest |elasticities| as ``(name, value, elasticity)``."""
        order = np.argsort(-np.abs(self.elasticities), kind="stable")[:k]
        return [(self.names[i], float(self.values[i]), float(self.elasticities[i])) for i in order]

    def to_dict(self, k: int | None = None) -> dict:
        rows = self.top(len(self.names) if k is None else k)
        return {
            "metric": self.metric,
            "metric_value": self.metric_value,
            "resources": dict(self.resources),
            "elasticities": [{"name": n, "value": v, "elasticity": e} for n, v, e in rows],
        }


@eqx.filter_jit
def _value_and_grad(point: Point, metric: str, tau: float):
    def f(p):
        return getattr(point_metrics(p, tau), metric)

    return eqx.filter_value_and_grad(f)(point)


def elasticities(
    hw: Hardware,
    model: ModelSpec,
    deploy: AbstractServingScheme,
    workload: Workload,
    metric: str = "tpot_s",
    tau: float = 0.0,
    wrt: tuple[str, ...] = ("hardware", "workload"),
) -> Sensitivity:
    """Elasticities ``d log(metric) / d log(x)`` w.r.t. every float leaf of the ``wrt`` roots.

    One reverse-mode gradient of the metric through the whole scheme. A leaf equal to 0 (e.g.
    no FP4 peak) has elasticity 0; a metric equal to 0 gives all-zero elasticities.

    **Arguments:** the design point; ``metric``: a field of :class:`Metrics`; ``tau``: smoothing
    temperature (0 = exact model; its straight-through tile/ceil steps then give the local
    slope of the continuous part); ``wrt``: roots among ``hardware``, ``workload``,
    ``deployment``, ``model``.

    **Returns:** :class:`Sensitivity`.
    """
    check_metric(metric)
    for r in wrt:
        if r not in ROOTS:
            raise SensitivityError(f"wrt = {r!r} must be one of {ROOTS}")
    point = Point(hw, deploy, workload, model)
    y, g = _value_and_grad(point, metric, tau)
    vals = named_leaves(point)
    grads = named_leaves(eqx.combine(g, eqx.filter(point, eqx.is_inexact_array, inverse=True)))
    y = float(y)
    names, xs, els = [], [], []
    for n, x in vals.items():
        if n.split(".", 1)[0] not in wrt:
            continue
        gx = grads.get(n)
        gx = 0.0 if gx is None else float(gx)
        x = float(x)
        names.append(n)
        xs.append(x)
        els.append(x * gx / y if y != 0 else 0.0)
    els_arr = np.asarray(els, dtype=float)
    res = {}
    if "hardware" in wrt:
        idx = {n: i for i, n in enumerate(names)}
        for r, (leaves, _, _) in RESOURCES.items():
            res[r] = float(sum(els_arr[idx["hardware." + s]] for s in leaves))
    return Sensitivity(metric, y, tuple(names), np.asarray(xs), els_arr, res)


# --------------------------------------------------------------------------------------------
# 1-D and 2-D sweeps (one vmap each)
# --------------------------------------------------------------------------------------------


@eqx.filter_jit
def _sweep_points(point: Point, names: tuple[str, ...], grid: dict, metrics: tuple, tau: float):
    def one(vals):
        m = point_metrics(set_values(point, dict(zip(names, vals))), tau)
        return {k: getattr(m, k) for k in metrics}

    return jax.vmap(one)(tuple(grid[n] for n in names))


def sweep_1d(
    hw: Hardware,
    model: ModelSpec,
    deploy: AbstractServingScheme,
    workload: Workload,
    name: str,
    values,
    metrics: tuple[str, ...] = ("ttft_s", "tpot_s", "throughput_tok_s_per_device"),
    tau: float = 0.0,
) -> dict[str, np.ndarray]:
    """Metrics along one parameter (one ``jit(vmap)`` call). ``name``: a leaf or ``scale.*``.

    **Returns:** ``{metric: array like values}`` plus ``{name: values}``.
    """
    point = Point(hw, deploy, workload, model)
    name = resolve_name(point, name)
    for k in metrics:
        check_metric(k)
    xs = np.asarray(values, dtype=float).ravel()
    out = _sweep_points(point, (name,), {name: jnp.asarray(xs)}, tuple(metrics), tau)
    res = {k: np.asarray(v) for k, v in out.items()}
    res[name] = xs
    return res


def sweep_2d(
    hw: Hardware,
    model: ModelSpec,
    deploy: AbstractServingScheme,
    workload: Workload,
    name_x: str,
    xs,
    name_y: str,
    ys,
    metrics: tuple[str, ...] = ("tpot_s",),
    tau: float = 0.0,
) -> dict[str, np.ndarray]:
    """Metrics over the grid ``ys × xs`` (arrays of shape ``(len(ys), len(xs))``), one vmap."""
    point = Point(hw, deploy, workload, model)
    name_x = resolve_name(point, name_x)
    name_y = resolve_name(point, name_y)
    if name_x == name_y:
        raise SensitivityError(f"sweep_2d needs two different parameters, got {name_x!r} twice")
    for k in metrics:
        check_metric(k)
    xs = np.asarray(xs, dtype=float).ravel()
    ys = np.asarray(ys, dtype=float).ravel()
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    grid = {name_x: jnp.asarray(gx.ravel()), name_y: jnp.asarray(gy.ravel())}
    out = _sweep_points(point, (name_x, name_y), grid, tuple(metrics), tau)
    res = {k: np.asarray(v).reshape(len(ys), len(xs)) for k, v in out.items()}
    res[name_x] = xs
    res[name_y] = ys
    return res
