"""Projection (inverse design): the least hardware that meets the SLOs.

For a design point ``(hw, model, deploy, workload)`` the constraints are unit-free ratios that
must all be <= 1:

- ``ttft``: ``ttft_pct_s / slo.ttft_s``; ``tpot``: ``tpot_pct_s / slo.tpot_s``;
- ``memory``: ``1 - memory_margin_frac`` (use / usable capacity);
- ``rate`` (open-loop workloads only): the busiest pool's utilisation (must stay below 1).

A resource (:data:`RESOURCES`: HBM bandwidth, HBM capacity, FLOP/s, scale-up and scale-out
bandwidth) is scaled by a factor ``s`` applied to its reference value (the other resources stay
at the reference, or at ``others`` times it). Every constraint ratio is non-increasing in every
resource, so the least ``s`` with ``max_c ratio_c(s) <= 1`` is found by bisection on ``log s``
between ``lo`` and ``hi`` on the exact (``tau = 0``) model: ``ITERATIONS`` halvings shrink the
bracket to ``log(hi/lo) / 2**ITERATIONS`` (< 1e-12 relative). A factor is ``inf`` when even
``hi`` cannot meet the SLO with that resource alone (e.g. TTFT bound by compute while scaling
bandwidth), and ``lo`` when the constraint never binds inside the bracket.

Joint scaling moves several resources together, ``x_r = x_r,ref * s**d_r`` along a direction
``d``; at the least ``s`` the binding constraint's elasticities w.r.t. each resource (one
gradient) say which resource limits the design. Everything is a pure JAX function of pytrees,
so :func:`required_scale` is vmappable across models, workloads and hardware.
"""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._hardware_names import canonical_resource
from .._numerics import safe_div
from ..deploy import AbstractServingScheme, Workload
from ..hardware import Hardware
from ..model import ModelSpec
from ._sensitivity import RESOURCES, Point, SensitivityError, point_metrics, set_values


CONSTRAINTS = ("ttft", "tpot", "memory", "rate")
ITERATIONS = 48


def constraint_ratios(point: Point, tau: float = 0.0) -> jax.Array:
    """The four unit-free constraint ratios (order of :data:`CONSTRAINTS`); <= 1 is feasible.

    ``rate`` is 0 for closed-loop workloads (a closed loop cannot overfill its servers).
    """
    m = point_metrics(point, tau)
    slo = point.workload.slo
    rate = m.utilisation if point.workload.load_mode == "open" else jnp.zeros(())
    return jnp.stack(
        [
            safe_div(m.ttft_pct_s, slo.ttft_s),
            safe_div(m.tpot_pct_s, slo.tpot_s),
            1.0 - m.memory_margin_frac,
            jnp.asarray(rate, dtype=float),
        ]
    )


def _scaled(point: Point, direction: dict, log_s) -> Point:
    return set_values(point, {"scale." + r: jnp.exp(d * log_s) for r, d in direction.items()})


def _check_direction(direction: dict) -> dict:
    if not direction:
        raise SensitivityError("a projection needs at least one resource to scale")
    out = {}
    for r, d in direction.items():
        r = canonical_resource(r)
        if r not in RESOURCES:
            raise SensitivityError(
                f"resource = {r!r} is not a resource; resources: {', '.join(RESOURCES)}"
            )
        d = float(d)
        if not (d > 0 and math.isfinite(d)):
            raise SensitivityError(f"direction[{r!r}] = {d:g} must be a finite positive exponent")
        out[r] = d
    return out


def required_scale(
    point: Point,
    direction: dict,
    lo: float = 1e-3,
    hi: float = 1e4,
    tau: float = 0.0,
    iterations: int = ITERATIONS,
    constraints: tuple[str, ...] = CONSTRAINTS,
) -> jax.Array:
    """Least ``s`` in ``[lo, hi]`` such that the point with resources ``x_r * s**d_r`` is feasible.

    Only ``constraints`` (names of :data:`CONSTRAINTS`) are enforced. Pure and
    jittable/vmappable (``direction``, ``lo``, ``hi``, ``constraints`` static). Returns ``inf``
    if ``hi`` is infeasible and ``lo`` if ``lo`` already is feasible.
    """
    a0, b0 = math.log(lo), math.log(hi)
    sel = np.asarray([CONSTRAINTS.index(c) for c in constraints])

    def worst(log_s):
        return jnp.max(constraint_ratios(_scaled(point, direction, log_s), tau)[sel])

    def body(_, ab):
        a, b = ab
        mid = 0.5 * (a + b)
        ok = worst(mid) <= 1.0
        return jnp.where(ok, a, mid), jnp.where(ok, mid, b)

    a, b = jax.lax.fori_loop(0, iterations, body, (jnp.asarray(a0), jnp.asarray(b0)))
    ok_hi = worst(jnp.asarray(b0)) <= 1.0
    ok_lo = worst(jnp.asarray(a0)) <= 1.0
    s = jnp.where(ok_lo, lo, jnp.exp(b))
    return jax.lax.stop_gradient(jnp.where(ok_hi, s, jnp.inf))


@eqx.filter_jit
def _solve(point, direction_items, lo, hi, tau, constraints):
    direction = dict(direction_items)
    s = required_scale(point, direction, lo, hi, tau, constraints=constraints)
    # at the solution, or at ``hi`` when unreachable (to say which constraint stays violated)
    log_s = jnp.where(jnp.isfinite(s), jnp.log(jnp.where(jnp.isfinite(s), s, 1.0)), math.log(hi))
    ratios = constraint_ratios(_scaled(point, direction, log_s), tau)
    sel = np.asarray([CONSTRAINTS.index(c) for c in constraints])
    k = jnp.asarray(sel)[jnp.argmax(ratios[sel])]

    def binding(factors):
        p = set_values(
            point,
            {"scale." + r: jnp.exp(d * log_s) * factors[r] for r, d in direction.items()}
            | {"scale." + r: factors[r] for r in RESOURCES if r not in direction and r in factors},
        )
        return jnp.log(constraint_ratios(p, tau)[k])

    ones = {r: jnp.ones(()) for r in RESOURCES}
    # d log(binding ratio) / d log(resource) at the solution (factors enter multiplicatively)
    el = jax.grad(binding)(ones)
    return s, ratios, k, el


@dataclasses.dataclass(frozen=True)
class Requirement:
    """Result of a projection (plain Python, JSON-ready via :meth:`to_dict`).

    ``factor``: the least scale ``s`` (``inf``: unreachable inside the bracket); ``values``:
    resource -> required value in display units (reference × ``s**d``) with ``units``;
    ``ratios``: constraint ratios at the solution (at ``hi`` if unreachable); ``binding``: the
    constraint that is tight (if unreachable: the one still violated at ``hi``);
    ``limiting_resource``: the resource with the most negative elasticity of the binding ratio
    (the one that buys the most); ``elasticities``: those elasticities for every resource.
    """

    direction: dict
    factor: float
    values: dict
    units: dict
    ratios: dict
    binding: str
    limiting_resource: str
    elasticities: dict
    status: str  # "ok" | "unreachable" | "below_bracket"

    def to_dict(self) -> dict:
        f = lambda x: x if math.isfinite(x) else None
        return {
            "direction": dict(self.direction),
            "factor": f(self.factor),
            "values": {k: f(v) for k, v in self.values.items()},
            "units": dict(self.units),
            "ratios": {k: f(v) for k, v in self.ratios.items()},
            "binding": self.binding,
            "limiting_resource": self.limiting_resource,
            "elasticities": dict(self.elasticities),
            "status": self.status,
        }


def resource_value(hw: Hardware, resource: str) -> float:
    """Reference value of a resource in its display unit (FLOP/s: the bf16 dense peak)."""
    leaves, unit, per = RESOURCES[resource]
    node = hw
    for part in leaves[0].split("."):
        node = getattr(node, part)
    return float(np.asarray(node)) / per


def project(
    hw: Hardware,
    model: ModelSpec,
    deploy: AbstractServingScheme,
    workload: Workload,
    direction: "dict | str",
    *,
    others: float = 1.0,
    lo: float = 1e-3,
    hi: float = 1e4,
    tau: float = 0.0,
    constraints: tuple[str, ...] = CONSTRAINTS,
) -> Requirement:
    """Least scaling of ``direction``'s resources (others at ``others`` × reference) meeting SLOs.

    **Arguments:** the design point; ``direction``: a resource name (scaled alone) or
    ``{resource: exponent}`` (joint: ``x_r = x_r,ref * s**exponent``); ``others``: factor on
    the resources not in ``direction`` (1 = the reference hardware; a large value asks "if the
    rest were unlimited"); ``lo``/``hi``: the bracket of ``s``; ``constraints``: which of
    :data:`CONSTRAINTS` to enforce (e.g. ``("tpot",)`` for the bandwidth a TPOT budget needs,
    as GenZ asks it).

    **Returns:** :class:`Requirement`; when unreachable, ``ratios`` and ``binding`` are taken
    at ``hi`` (the constraint that this resource cannot fix).
    """
    constraints = tuple(constraints)
    if not constraints:
        raise SensitivityError("constraints must name at least one of " + ", ".join(CONSTRAINTS))
    for c in constraints:
        if c not in CONSTRAINTS:
            raise SensitivityError(f"constraint = {c!r} must be one of {CONSTRAINTS}")
    if isinstance(direction, str):
        direction = {direction: 1.0}
    direction = _check_direction(direction)
    if not (0 < lo < hi and math.isfinite(hi)):
        raise SensitivityError(f"bracket lo = {lo:g}, hi = {hi:g} must satisfy 0 < lo < hi < inf")
    if not (others > 0 and math.isfinite(others)):
        raise SensitivityError(f"others = {others:g} must be a finite positive factor")
    point = Point(hw, deploy, workload, model)
    if others != 1.0:
        point = set_values(point, {"scale." + r: others for r in RESOURCES if r not in direction})
    s, ratios, k, el = _solve(point, tuple(sorted(direction.items())), lo, hi, tau, constraints)
    s = float(s)
    status = "ok"
    if not math.isfinite(s):
        status = "unreachable"
    elif s <= lo * (1 + 1e-12):
        status = "below_bracket"
    ref_hw = point.hardware
    values, units = {}, {}
    for r in RESOURCES:
        units[r] = RESOURCES[r][1]
        base = resource_value(ref_hw, r)
        values[r] = base * (s ** direction[r]) if r in direction else base
    ratio_d = {c: float(v) for c, v in zip(CONSTRAINTS, np.asarray(ratios))}
    el_d = {r: float(v) for r, v in el.items()}
    limiting = min(el_d, key=lambda r: el_d[r]) if status != "below_bracket" else ""
    return Requirement(
        direction=direction,
        factor=s,
        values=values,
        units=units,
        ratios=ratio_d,
        binding=CONSTRAINTS[int(k)] if status != "below_bracket" else "",
        limiting_resource=limiting,
        elasticities=el_d,
        status=status,
    )


def requirements_table(
    hw: Hardware,
    model: ModelSpec,
    deploy: AbstractServingScheme,
    workload: Workload,
    resources: tuple[str, ...] = tuple(RESOURCES),
    *,
    others: float = 1.0,
    lo: float = 1e-3,
    hi: float = 1e4,
    tau: float = 0.0,
    constraints: tuple[str, ...] = CONSTRAINTS,
) -> dict[str, Requirement]:
    """:func:`project` for each resource alone (the others at ``others`` × reference)."""
    return {
        r: project(
            hw,
            model,
            deploy,
            workload,
            r,
            others=others,
            lo=lo,
            hi=hi,
            tau=tau,
            constraints=constraints,
        )
        for r in resources
    }
