"""L4: gradient search over a pipeline's device split, batch sizes and retrieve-vs-recompute
choices (:class:`diffperf.pipeline.PipelineDesign`), then an exact look at the rounded
neighbours.

1. Relaxed search: ``starts`` designs (the pipeline's own, then Gaussian perturbations of
   its logits with standard deviation ``sigma``, from ``seed``) each take ``steps`` Adam
   steps on :func:`diffperf.pipeline.design_loss` at temperature ``tau``; one
   ``eqx.filter_jit`` holds ``vmap`` over starts of ``lax.scan`` over steps.
2. Rounding: around each start's relaxed optimum (and the pipeline's own design), every
   combination of
   - per-engine device splits in integer units (one device; a ``1/cpu_slices`` slice of a
     socket on shared-memory CPU engines), floor or ceil of the relaxed split, at least one
     instance (``devices_per_instance``) per stage, summing to the engine's units (extra
     devices beyond whole instances count as fractional instances, as in ``evaluate``);
   - batch sizes ``floor`` / ``ceil`` of the relaxed value (integers >= 1);
   - retrieve weight 0 (recompute) or 1 (fetch) for every KV-retrieval stage;
   is evaluated exactly (``tau = 0``, vmapped in fixed-size chunks). The best is the lowest
   :func:`diffperf.pipeline.objective` (``-log`` throughput per device plus SLO, utilisation
   and memory penalties).
"""

import dataclasses
import itertools
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..pipeline import (
    KVRetrieval,
    Pipeline,
    PipelineDesign,
    PipelineResult,
    apply_design,
    design_loss,
    evaluate,
    initial_design,
    objective,
)


_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class PipelineSearchSettings:
    """Multi-start Adam settings (``tau``: smooth-min temperature of the relaxed search;
    ``cpu_slices``: slices per socket of shared-memory engines; ``max_candidates``: rounded
    neighbours per start before batch sizes fall back to nearest rounding)."""

    starts: int = 8
    steps: int = 100
    seed: int = 0
    learning_rate: float = 0.1
    sigma: float = 0.5
    tau: float = 0.05
    cpu_slices: int = 8
    max_candidates: int = 2048

    def __post_init__(self):
        for k in ("starts", "steps", "cpu_slices", "max_candidates"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} = {v!r} must be a positive integer")
        for k in ("learning_rate", "tau"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{k} = {v!r} must be a positive number")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma = {self.sigma!r} must be a non-negative number")


@dataclasses.dataclass(frozen=True)
class RoundedDesign:
    """A concrete design: per-stage device counts (devices; fractions of a socket on
    shared-memory engines), integer batch sizes and retrieve weights (0/1 on KV stages)."""

    devices: tuple[float, ...]
    batch_size: tuple[float, ...]
    retrieve_weight: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class PipelineSearchResult:
    """The best rounded design, its exact result and loss, the relaxed optimum (the start
    with the lowest relaxed loss) and bookkeeping."""

    design: RoundedDesign
    result: PipelineResult
    objective: float
    relaxed: PipelineDesign
    relaxed_result: PipelineResult
    relaxed_loss: float
    start_losses: np.ndarray
    evaluated: int
    wall_s: float


# ------------------------------------------------------------------------------------------
# relaxed search
# ------------------------------------------------------------------------------------------


def perturbed_starts(p: Pipeline, starts: int, seed: int, sigma: float) -> PipelineDesign:
    """``starts`` designs stacked on a leading axis: ``initial_design(p)`` then Gaussian
    perturbations (standard deviation ``sigma``) of every logit."""
    d0 = initial_design(p)
    leaves, tree = jax.tree_util.tree_flatten(d0)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    out = []
    for k, x in zip(keys, leaves):
        noise = sigma * jax.random.normal(k, (starts, *x.shape), dtype=x.dtype)
        noise = noise.at[0].set(0.0)
        out.append(x[None] + noise)
    return jax.tree_util.tree_unflatten(tree, out)


@eqx.filter_jit
def relaxed_search(p: Pipeline, d0: PipelineDesign, steps: int, learning_rate: float, tau: float):
    """Adam on ``design_loss`` from each stacked start ``d0`` (vmap over starts, scan over
    ``steps``). **Returns:** final designs, per-step losses ``(starts, steps)`` and final
    losses ``(starts,)``."""
    opt = optax.adam(learning_rate)

    def run(d):
        def body(carry, _):
            d, s = carry
            loss, g = eqx.filter_value_and_grad(design_loss)(d, p, tau)
            u, s = opt.update(g, s, d)
            return (eqx.apply_updates(d, u), s), loss

        (d, _), losses = jax.lax.scan(body, (d, opt.init(d)), None, length=steps)
        return d, losses, design_loss(d, p, tau)

    return jax.vmap(run)(d0)


# ------------------------------------------------------------------------------------------
# rounding
# ------------------------------------------------------------------------------------------


def set_design_values(p: Pipeline, shares, batch, retrieve) -> Pipeline:
    """``p`` with per-stage ``share``, ``batching.batch_size`` and, on KV-retrieval stages,
    ``retrieve_weight`` replaced (arrays aligned with ``p.stages``)."""
    stages = list(p.stages)
    for i, s in enumerate(stages):
        s = eqx.tree_at(lambda s: s.share, s, shares[i])
        s = eqx.tree_at(lambda s: s.batching.batch_size, s, batch[i])
        if isinstance(s.stage, KVRetrieval):
            s = eqx.tree_at(lambda s: s.stage.retrieve_weight, s, retrieve[i])
        stages[i] = s
    return eqx.tree_at(lambda q: q.stages, p, tuple(stages))


@eqx.filter_jit
def _evaluate_values(p: Pipeline, shares, batch, retrieve):
    def one(sh, b, w):
        q = set_design_values(p, sh, b, w)
        r = evaluate(q, 0.0)
        return r, objective(r, q)

    return jax.vmap(one)(shares, batch, retrieve)


def relaxed_values(p: Pipeline, d: PipelineDesign) -> tuple[np.ndarray, ...]:
    """Per-stage shares (softmax per engine), batch sizes and retrieve weights of ``d``."""
    q = apply_design(p, d)
    shares = np.asarray([float(s.share) for s in q.stages])
    batch = np.asarray([float(s.batching.batch_size) for s in q.stages])
    rw = np.asarray(
        [
            float(s.stage.retrieve_weight) if isinstance(s.stage, KVRetrieval) else 0.0
            for s in q.stages
        ]
    )
    return shares, batch, rw


def engine_units(p: Pipeline, cpu_slices: int) -> dict[str, tuple[int, float]]:
    """Per engine: ``(units, devices per unit)``; ValueError for a fractional device count on
    an engine that is split by whole devices."""
    out = {}
    for e in p.engines:
        count = float(e.count)
        if e.shared_memory:
            out[e.name] = (max(1, round(count * cpu_slices)), 1.0 / cpu_slices)
        else:
            if abs(count - round(count)) > 1e-9:
                raise ValueError(
                    f"engines.{e.name}.count = {count:g} devices must be an integer to be "
                    "split between stages"
                )
            out[e.name] = (round(count), 1.0)
    return out


def _min_units(stage, per_unit: float) -> int:
    """Units a stage needs for one instance: its devices per instance on engines split by
    whole devices, one slice on shared-memory engines."""
    dpi = float(stage.stage.devices_per_instance)
    return max(1, round(dpi / per_unit)) if per_unit == 1.0 else 1


def split_candidates(p: Pipeline, shares: np.ndarray, cpu_slices: int) -> list[np.ndarray]:
    """Per-stage shares of every integer split near ``shares`` (product over engines): on
    each engine, ``floor`` or ``ceil`` of each stage's relaxed units (widened by up to 2 when
    no combination sums to the engine's units), at least one instance per stage."""
    units = engine_units(p, cpu_slices)
    per_engine = []
    for e in p.engines:
        members = [i for i, s in enumerate(p.stages) if s.engine == e.name]
        if not members:
            continue
        total, per_unit = units[e.name]
        mins = [_min_units(p.stages[i], per_unit) for i in members]
        if sum(mins) > total:
            raise ValueError(
                f"engines.{e.name}.count = {float(e.count):g}: {total} unit(s) cannot give "
                f"each of its {len(members)} stage(s) one instance ({sum(mins)} needed)"
            )
        rel = [shares[i] * total for i in members]
        combos: list[tuple[int, ...]] = []
        for widen in (0, 1, 2):
            opts = [
                range(max(m, math.floor(r) - widen), max(m, math.ceil(r) + widen) + 1)
                for r, m in zip(rel, mins)
            ]
            combos = [c for c in itertools.product(*opts) if sum(c) == total]
            if combos:
                break
        if not combos:  # largest remainder above the minimums
            k = [max(m, math.floor(r)) for r, m in zip(rel, mins)]
            while sum(k) > total:
                j = int(np.argmax([a - m for a, m in zip(k, mins)]))
                k[j] -= 1
            order = np.argsort([-(r - math.floor(r)) for r in rel])
            for j in itertools.islice(itertools.cycle(order), total - sum(k)):
                k[j] += 1
            combos = [tuple(k)]
        per_engine.append([(members, [c / total for c in cc]) for cc in combos])
    out = []
    for choice in itertools.product(*per_engine):
        sh = np.array(shares, dtype=float)
        for members, vals in choice:
            for i, v in zip(members, vals):
                sh[i] = v
        out.append(sh)
    return out


def rounded_candidates(
    p: Pipeline, d: PipelineDesign, settings: PipelineSearchSettings
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rounded neighbours of relaxed design ``d``: (shares, batch sizes, retrieve weights)."""
    shares, batch, rw = relaxed_values(p, d)
    splits = split_candidates(p, shares, settings.cpu_slices)
    kv = [isinstance(s.stage, KVRetrieval) for s in p.stages]
    rws = [
        np.array(c, dtype=float)
        for c in itertools.product(*[(0.0, 1.0) if k else (0.0,) for k in kv])
    ]
    bopts = [sorted({max(1.0, math.floor(b)), max(1.0, math.ceil(b))}) for b in batch]
    if len(splits) * len(rws) * math.prod(len(o) for o in bopts) > settings.max_candidates:
        bopts = [[max(1.0, float(round(b)))] for b in batch]
    bs = [np.array(c, dtype=float) for c in itertools.product(*bopts)]
    out = [(s, b, w) for s in splits for b in bs for w in rws]
    return out[: settings.max_candidates]


def evaluate_candidates(p: Pipeline, cands) -> tuple[PipelineResult, np.ndarray]:
    """Exact (``tau = 0``) results and losses of candidate designs, in chunks of 256."""
    n = len(cands)
    rs, losses = [], []
    for s in range(0, n, _CHUNK):
        part = cands[s : s + _CHUNK]
        k = len(part)
        size = _CHUNK if n > _CHUNK else n
        part = part + [part[0]] * (size - k)
        cols = [jnp.asarray(np.stack([c[j] for c in part]), dtype=float) for j in range(3)]
        r, loss = _evaluate_values(p, *cols)
        rs.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:k], r))
        losses.append(np.asarray(loss)[:k])
    r = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *rs)
    return r, np.concatenate(losses)


def search_pipeline(
    p: Pipeline, settings: PipelineSearchSettings = PipelineSearchSettings()
) -> PipelineSearchResult:
    """Multi-start relaxed search, then the best exactly evaluated rounded neighbour.

    **Arguments:** the :class:`~diffperf.pipeline.Pipeline` (its shares, batch sizes and
    retrieve weights are the first start); the :class:`PipelineSearchSettings`.

    **Returns:** a :class:`PipelineSearchResult`.
    """
    t0 = time.perf_counter()
    engine_units(p, settings.cpu_slices)  # trace-free check of the engines first
    d0 = perturbed_starts(p, settings.starts, settings.seed, settings.sigma)
    ds, _, final = relaxed_search(p, d0, settings.steps, settings.learning_rate, settings.tau)
    final = np.asarray(final)
    final = np.where(np.isfinite(final), final, np.inf)
    cands, seen = [], set()
    designs = [jax.tree_util.tree_map(lambda a, i=i: a[i], ds) for i in range(settings.starts)]
    for d in [initial_design(p), *designs]:  # the pipeline's own design rounded too
        for c in rounded_candidates(p, d, settings):
            key = tuple(np.round(np.concatenate(c), 12))
            if key not in seen:
                seen.add(key)
                cands.append(c)
    r, losses = evaluate_candidates(p, cands)
    losses = np.where(np.isfinite(losses), losses, np.inf)
    j = int(np.argmin(losses))
    best = jax.tree_util.tree_map(lambda a: jnp.asarray(a[j]), r)
    sh, b, w = cands[j]
    dev_total = {e.name: float(e.count) for e in p.engines}
    design = RoundedDesign(
        devices=tuple(float(sh[i] * dev_total[s.engine]) for i, s in enumerate(p.stages)),
        batch_size=tuple(float(x) for x in b),
        retrieve_weight=tuple(float(x) for x in w),
    )
    k = int(np.argmin(final))
    relaxed = jax.tree_util.tree_map(lambda a: a[k], ds)
    relaxed_result = evaluate(apply_design(p, relaxed), 0.0)
    return PipelineSearchResult(
        design=design,
        result=best,
        objective=float(losses[j]),
        relaxed=relaxed,
        relaxed_result=relaxed_result,
        relaxed_loss=float(final[k]),
        start_losses=final,
        evaluated=len(cands),
        wall_s=time.perf_counter() - t0,
    )


def _metrics(r: PipelineResult) -> dict:
    return {
        "throughput_per_s": float(r.throughput_per_s),
        "e2e_latency_s": float(r.e2e_latency_s),
        "ttft_s": float(r.ttft_s),
        "throughput_per_device": float(r.throughput_per_device),
        "devices": float(r.devices),
        "feasible": bool(r.feasible),
        "meets_slo": bool(r.meets_slo),
    }


def pipeline_search_dict(p: Pipeline, res: PipelineSearchResult) -> dict:
    """JSON-ready report: ``best`` (metrics and the rounded design per stage), ``objective``,
    ``relaxed`` (the unrounded optimum, for reference), ``evaluated_exactly``, ``wall_s``."""
    stages = {}
    for i, s in enumerate(p.stages):
        row = {
            "engine": s.engine,
            "devices": res.design.devices[i],
            "batch_size": res.design.batch_size[i],
        }
        if isinstance(s.stage, KVRetrieval):
            row["retrieval"] = "fetch" if res.design.retrieve_weight[i] > 0.5 else "recompute"
        stages[s.name] = row
    shares, batch, rw = relaxed_values(p, res.relaxed)
    relaxed = {}
    for i, s in enumerate(p.stages):
        row = {
            "devices": float(shares[i] * float(p.engine(s.engine).count)),
            "batch_size": float(batch[i]),
        }
        if isinstance(s.stage, KVRetrieval):
            row["retrieve_weight"] = float(rw[i])
        relaxed[s.name] = row
    return {
        "best": {**_metrics(res.result), "design": stages},
        "objective": res.objective,
        "relaxed": {
            **_metrics(res.relaxed_result),
            "loss": res.relaxed_loss,
            "design": relaxed,
        },
        "start_losses": [float(x) for x in res.start_losses],
        "evaluated_exactly": res.evaluated,
        "wall_s": res.wall_s,
    }
