"""Gradient search over relaxed deployments (and hardware), rounded and evaluated exactly.

For each serving scheme (the scheme is an enumerated choice: each is searched and the best
kept):

1. **Space**: the scheme's exact grid table on the device budget (same :class:`GridSpace`,
   same valid degrees as :func:`~diffperf.search.grid_search`) and its continuous hull
   (:class:`~diffperf.search._relax.RelaxedSpace`), optionally times a box of hardware
   parameters (:class:`~diffperf.search._relax.HardwareSpace`).
2. **Ascent**: ``starts`` seeded starting points (random valid designs of the table, random
   hardware in the box) ascend the relaxed objective ``log(value) - w_t * penalty`` with Adam
   inside ONE ``jit``: ``lax.scan`` over ``steps``, ``vmap`` over starts, the smooth models at
   temperature ``tau``, projection onto the box after each step. The penalty weight ``w_t``
   grows geometrically from 1 to ``objective.penalty_weight`` (first find throughput, then
   enforce the SLOs). Non-finite gradient entries are zeroed (Adam's normalisation makes the
   step size independent of the gradient's scale).
3. **Rounding**: each start's final point and the best point on its path are rounded to the
   ``neighbours`` nearest valid designs of the table (times the ``2^h`` hardware level
   corners around it); all are evaluated exactly (``tau = 0``) in one vectorised call and the
   best feasible by the exact objective is kept (if none is feasible, the least penalised).
4. **Polish** (discrete local search): the incumbent's neighbours, i.e. the designs that differ
   from it along at most two coordinates of the space (another batch limit; another TP with
   the matching instance count; ...) plus its nearest designs, times hardware levels within
   one step, are evaluated exactly; repeated while it improves (at most ``polish_rounds``).

The answer is always a rounded design of the exact discrete space with its exact metrics,
the exact objective value and whether it meets every constraint (``meets_slo``: SLOs, memory
and rate at ``tau = 0``), so it compares like with like against the grid optimum of the
same space. Seeds make it reproducible (same seed, same answer).
"""

import dataclasses
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from ..deploy import Metrics, Workload, evaluate, metrics_to_dict
from ..hardware import Hardware
from ..model import ModelSpec
from ._grid import (
    _INPUT_COLUMNS,
    SCHEMES,
    GridSpace,
    _evaluate_columns,
    applicable_schemes,
    canonical_scheme,
    default_dtypes,
    deployment_dict,
    enumerate_grid,
    make_deployment,
)
from ._objective import Objective, objective_value, relaxed_objective
from ._relax import (
    HARDWARE_UNITS,
    HardwareSpace,
    RelaxedBox,
    RelaxedSpace,
    with_hardware_values,
)


@dataclasses.dataclass(frozen=True)
class OptimizeSettings:
    """Search settings (static): multi-start count, Adam steps and rate, smoothing
    temperature, neighbours evaluated per rounded point, polish rounds, seed;
    ``fast_compile`` compiles the ascent on a CPU backend without LLVM optimisations and with
    XLA's elemental emitters (about a third less compile time, and faster steps for this
    program; see ``_FAST_COMPILE``); other backends ignore it.

    60 steps: the penalty weight ramps over the steps, and the ascent only has to reach the
    basin of the optimum, which the exact polish then finishes; the agreement tests with the
    grid run at 60 steps (and 8 starts)."""

    starts: int = 16
    steps: int = 60
    learning_rate: float = 0.08
    tau: float = 0.05
    neighbours: int = 16
    polish_rounds: int = 8
    seed: int = 0
    fast_compile: bool = True

    def __post_init__(self):
        for name in ("starts", "steps", "neighbours"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be a positive integer")
        if not (self.learning_rate > 0):
            raise ValueError(f"learning_rate = {self.learning_rate} must be positive")
        if not (0 < self.tau < 1):
            raise ValueError(f"tau = {self.tau} must be in (0, 1) (the relaxation's temperature)")
        if self.polish_rounds < 0:
            raise ValueError(f"polish_rounds = {self.polish_rounds} must be >= 0")


@dataclasses.dataclass(frozen=True)
class SchemeOptimum:
    """One scheme's answer: the rounded design (``row`` of ``space.table``), its hardware
    values (SI, empty when the hardware is fixed), exact metrics (dict), objective value,
    ``meets_slo``; the search path (``path``: ``(starts, steps, dim)`` normalised coordinates;
    ``path_objective``: relaxed objective per step) and counts."""

    scheme: str
    space: RelaxedSpace
    row: int
    hardware: dict
    metrics: dict
    objective: float
    meets_slo: bool
    path: np.ndarray
    path_objective: np.ndarray
    evaluated: int
    space_size: int
    wall_s: float

    def deployment(self) -> dict:
        return deployment_dict(self.space.table, self.row)


@dataclasses.dataclass(frozen=True)
class OptimizeResult:
    """Per-scheme optima and the best of them (``best``: scheme name or None)."""

    schemes: dict
    skipped: dict
    best: str | None
    objective: Objective
    hardware_space: HardwareSpace | None
    wall_s: float


# --------------------------------------------------------------------------------------------
# jitted pieces
# --------------------------------------------------------------------------------------------


def _design_metrics(hw, model, workload, box: RelaxedBox, z, dtypes, saturate, tau):
    cols = box.columns(z)
    deploy = make_deployment(box.scheme, cols, dtypes)
    w = workload
    if saturate:
        w = eqx.tree_at(lambda x: x.concurrency, workload, cols["concurrency"])
    return evaluate(hw, model, deploy, w, tau)


def _ascend_impl(
    hw, model, workload, objective, cost_model, box, z0, h0, hnames, hlo, hhi, lr, args
):
    """Adam ascent from every start (vmap) for ``steps`` (scan); see module docstring."""
    dtypes, saturate, tau, steps = args
    d = z0.shape[1]

    def soft(x, weight):
        z, hz = x[:d], x[d:]
        h = hw
        if hnames:
            vals = jnp.exp(jnp.log(hlo) + (jnp.log(hhi) - jnp.log(hlo)) * hz)
            h = with_hardware_values(hw, hnames, vals)
        m = _design_metrics(h, model, workload, box, z, dtypes, saturate, tau)
        cm = cost_model if hnames else None
        return relaxed_objective(m, h, objective, weight, cm, hw)

    opt = optax.adam(lr)
    w_end = jnp.maximum(objective.penalty_weight, 1.0)

    def run(x0):
        def step(carry, t):
            x, state = carry
            weight = w_end ** (t / max(steps - 1, 1))
            val, g = jax.value_and_grad(soft)(x, weight)
            g = jnp.where(jnp.isfinite(g), g, 0.0)
            upd, state = opt.update(-g, state, x)
            xn = optax.projections.projection_box(optax.apply_updates(x, upd), 0.0, 1.0)
            return (xn, state), (x, jnp.where(jnp.isfinite(val), val, -jnp.inf))

        (xf, _), (path, vals) = lax.scan(step, (x0, opt.init(x0)), jnp.arange(steps, dtype=float))
        return xf, path, vals

    x0 = jnp.concatenate([z0, h0], axis=1)
    return jax.vmap(run)(x0)


# The ascent's program (value and gradient of a whole serving scheme, scanned over steps,
# vmapped over starts) is large, and a search runs it for only starts x steps points: XLA's
# optimisations cost more than they save there. On the CPU backend two options pick a
# cheaper program: LLVM at -O0, and XLA's classic elemental emitters instead of its newer
# fusion emitters (which compile slower and, for this program of many tiny fused kernels,
# also run slower). Measured on 2 CPU cores, DeepSeek-V3 P/D on 64 x H800, 16 starts x 60
# steps, after tracing (10.9 s either way): XLA compile 43.5 s with -O0 alone, 29.4 s with
# both; a whole search after compilation 0.30 s -> 0.13 s. ``OptimizeSettings.fast_compile``
# picks this program.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
_ascend = eqx.filter_jit(_ascend_impl)
_ascend_fast_compile = eqx.filter_jit(_ascend_impl, compiler_options=_FAST_COMPILE)


@eqx.filter_jit
def _evaluate_hw_rows(hw, model, workload, cols, hvals, hnames, scheme, dtypes, saturate):
    """Exact (tau=0) metrics of rows ``cols`` on hardware ``hvals`` (both batched)."""

    def one(c, v):
        h = with_hardware_values(hw, hnames, v)
        deploy = make_deployment(scheme, c, dtypes)
        w = workload
        if saturate:
            w = eqx.tree_at(lambda x: x.concurrency, workload, c["concurrency"])
        return evaluate(h, model, deploy, w, 0.0)

    return jax.vmap(one)(cols, hvals)


def _pad_size(n: int) -> int:
    return 8 ** max(int(math.ceil(math.log(max(n, 1), 8) - 1e-9)), 3)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    if len(a) < size:
        a = np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)])
    return a


def _exact(ctx, rows: np.ndarray, hidx: np.ndarray | None):
    """Exact metrics (numpy) and objective values of designs ``rows`` on hardware levels
    ``hidx`` (``(m, h)`` or None for the fixed hardware)."""
    hw, model, workload, space, hs, objective, cost_model, saturate = ctx
    table = space.table
    names = _INPUT_COLUMNS[table.scheme]
    n = len(rows)
    # small tables: pad to the grid's own size, which reuses the grid's compiled evaluator
    size = _pad_size(table.size) if table.size <= 8**4 else _pad_size(n)
    size = max(size, _pad_size(n))
    fc = space.float_columns
    cols = {k: jnp.asarray(_pad(fc[k][rows], size)) for k in names}
    if hs is None:
        m = _evaluate_columns(
            hw, model, workload, cols, {}, table.scheme, table.dtypes, saturate, 0.0
        )
        m = jax.tree_util.tree_map(lambda x: np.asarray(x)[:n], m)
        val = np.asarray(objective_value(m, hw, objective))
        hv = None
    else:
        hv = hs.level_values(hidx)
        m = _evaluate_hw_rows(
            hw,
            model,
            workload,
            cols,
            jnp.asarray(_pad(hv, size)),
            hs.names,
            table.scheme,
            table.dtypes,
            saturate,
        )
        m = jax.tree_util.tree_map(lambda x: np.asarray(x)[:n], m)
        val = np.asarray(_objective_rows(hw, m, jnp.asarray(hv), hs.names, objective, cost_model))
    return m, np.broadcast_to(val, (n,)), hv


@eqx.filter_jit
def _objective_rows(hw, m, hv, hnames, objective, cost_model):
    def one(mi, v):
        return objective_value(mi, with_hardware_values(hw, hnames, v), objective, cost_model, hw)

    return jax.vmap(one)(m, hv)


def _pick(m: Metrics, val: np.ndarray) -> int:
    """Best feasible by objective value; if none, the least penalised."""
    feas = np.asarray(m.feasible) > 0.5
    if feas.any():
        return int(np.flatnonzero(feas)[np.argmax(np.where(np.isfinite(val), val, -np.inf)[feas])])
    return int(np.argmin(np.asarray(m.penalty)))


def _better(a: tuple, b: tuple) -> bool:
    """``(feasible, value, penalty)`` ordering: feasible first, then value / lower penalty."""
    if a[0] != b[0]:
        return a[0] > b[0]
    if a[0]:
        return a[1] > b[1]
    return a[2] < b[2]


# --------------------------------------------------------------------------------------------
# the discrete space, cached
# --------------------------------------------------------------------------------------------


def _fingerprint(tree) -> tuple:
    """Hashable value of a pytree (structure, static fields and leaf bytes)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return (treedef, tuple(np.asarray(x).tobytes() for x in leaves))


_SPACES: dict = {}
_SPACES_MAX = 8
# a 4-million-design table with its tree, codes and float columns takes ~1.5 GB: the cache is
# bounded by designs held as well as by count (the newest space is always kept)
_SPACES_MAX_ROWS = 4_000_000


def _relaxed_space(hw, model, n_devices, scheme, space, dtypes) -> RelaxedSpace:
    """The scheme's exact table and its relaxed hull, cached on everything they depend on.

    Research scripts search the same space many times (other objectives, SLOs, workloads,
    seeds); the table, its normalised rows, the k-d tree used for rounding and the integer
    codes used for axis moves are built once (a 2 x 10^5-row P/D table: ~0.2 s). The cache
    holds the most recently used spaces, at most ``_SPACES_MAX`` of them and at most
    ``_SPACES_MAX_ROWS`` designs in all; a table is read-only once built.
    """
    key = (_fingerprint(hw), _fingerprint(model), int(n_devices), scheme, space, tuple(dtypes))
    rs = _SPACES.pop(key, None)
    if rs is None:
        table = enumerate_grid(hw, model, n_devices, scheme, space, dtypes)
        for v in table.columns.values():
            if isinstance(v, np.ndarray):
                v.flags.writeable = False
        rs = RelaxedSpace.from_table(table, n_devices)
    _SPACES[key] = rs  # most recently used last
    while len(_SPACES) > 1 and (
        len(_SPACES) > _SPACES_MAX or sum(r.table.size for r in _SPACES.values()) > _SPACES_MAX_ROWS
    ):
        _SPACES.pop(next(iter(_SPACES)))  # least recently used first
    return rs


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def optimize_scheme(
    hw: Hardware,
    model: ModelSpec,
    n_devices: int,
    workload: Workload,
    scheme: str,
    space: GridSpace = GridSpace(),
    objective: Objective = Objective(),
    hardware: HardwareSpace | None = None,
    settings: OptimizeSettings = OptimizeSettings(),
    dtypes: tuple | None = None,
    cost_model=None,
) -> SchemeOptimum:
    """Search one scheme (module docstring). ``hardware``: searched parameters or None."""
    t0 = time.perf_counter()
    scheme = canonical_scheme(scheme)
    dtypes = tuple(dtypes or default_dtypes(model))
    hs = hardware if hardware is not None and hardware.dim else None
    prune_hw = hw
    if hs is not None and "hbm_capacity" in hs.names:  # prune with the largest capacity
        top = float(hs.hi[hs.names.index("hbm_capacity")])
        prune_hw = with_hardware_values(hw, ("hbm_capacity",), [top])
    rs = _relaxed_space(prune_hw, model, n_devices, scheme, space, dtypes)
    table = rs.table
    if hs is not None and cost_model is None and objective.kind != "tokens-per-device":
        from ..hardware._cost_model import default_cost_model

        cost_model = default_cost_model()
    saturate = space.load == "saturate" and workload.load_mode == "closed"
    ctx = (hw, model, workload, rs, hs, objective, cost_model, saturate)

    # 1-2: seeded multi-start ascent
    key = jax.random.PRNGKey(settings.seed)
    k1, k2 = jax.random.split(key)
    s = settings.starts
    start_rows = np.asarray(jax.random.randint(k1, (s,), 0, table.size))
    z0 = jnp.asarray(rs.rows[start_rows])
    hdim = hs.dim if hs is not None else 0
    h0 = jax.random.uniform(k2, (s, hdim), dtype=float)
    hnames = hs.names if hs is not None else ()
    hlo = jnp.asarray(hs.lo if hs is not None else np.ones(0))
    hhi = jnp.asarray(hs.hi if hs is not None else np.ones(0))
    # -O0 only where LLVM compiles for the host CPU; GPU kernels keep full optimisation
    fast = settings.fast_compile and jax.default_backend() == "cpu"
    ascend = _ascend_fast_compile if fast else _ascend
    xf, path, vals = ascend(
        hw,
        model,
        workload,
        objective,
        cost_model,
        rs.box,
        z0,
        h0,
        hnames,
        hlo,
        hhi,
        settings.learning_rate,
        (dtypes, saturate, settings.tau, int(settings.steps)),
    )
    xf, path, vals = np.asarray(xf), np.asarray(path), np.asarray(vals)
    best_step = np.argmax(np.where(np.isfinite(vals), vals, -np.inf), axis=1)
    cands = np.concatenate([xf, path[np.arange(s), best_step]], axis=0)

    # 3: round every candidate to its neighbours and evaluate them exactly
    d = rs.dim
    near = rs.nearest(cands[:, :d], settings.neighbours)
    if hs is None:
        rows = np.unique(near.reshape(-1))
        hidx = None
    else:
        pairs = set()
        for c, nr in zip(cands, near):
            corners = hs.bracket(c[d:])
            for r in nr:
                for h in corners:
                    pairs.add((int(r), *map(int, h)))
        arr = np.array(sorted(pairs), dtype=np.int64)
        rows, hidx = arr[:, 0], arr[:, 1:]
    m, val, _ = _exact(ctx, rows, hidx)
    evaluated = len(rows)
    i = _pick(m, val)
    seen = set(zip(rows.tolist(), *(hidx.T.tolist() if hidx is not None else [])))
    inc_row = int(rows[i])
    inc_h = hidx[i] if hidx is not None else None
    inc_m = jax.tree_util.tree_map(lambda x, i=i: x[i], m)
    inc = (bool(inc_m.feasible > 0.5), float(val[i]), float(inc_m.penalty))

    # 4: polish by exact evaluation of the incumbent's neighbours
    for _ in range(settings.polish_rounds):
        nr = rs.nearest(rs.rows[inc_row][None], 2 * settings.neighbours)[0]
        cap = 2048 if hs is None else max(2048 // 3**hs.dim, 2 * settings.neighbours)
        nr = np.unique(np.concatenate([nr, rs.axis_neighbours(inc_row, 2, cap)]))
        if hs is None:
            new = [int(r) for r in nr if (int(r),) not in seen]
            if not new:
                break
            rws, hid = np.array(new), None
            seen.update((r,) for r in new)
        else:
            pairs = [
                (int(r), *map(int, h))
                for r in nr
                for h in hs.neighbours(inc_h)
                if (int(r), *map(int, h)) not in seen
            ]
            if not pairs:
                break
            seen.update(pairs)
            arr = np.array(pairs, dtype=np.int64)
            rws, hid = arr[:, 0], arr[:, 1:]
        m, val, _ = _exact(ctx, rws, hid)
        evaluated += len(rws)
        j = _pick(m, val)
        cand = (bool(m.feasible[j] > 0.5), float(val[j]), float(m.penalty[j]))
        if not _better(cand, inc):
            break
        inc, inc_row = cand, int(rws[j])
        inc_h = hid[j] if hid is not None else None
        inc_m = jax.tree_util.tree_map(lambda x, j=j: x[j], m)

    hw_values = {}
    if hs is not None:
        v = hs.level_values(inc_h)[0]
        hw_values = {n: float(x) for n, x in zip(hs.names, v)}
    return SchemeOptimum(
        scheme=scheme,
        space=rs,
        row=inc_row,
        hardware=hw_values,
        metrics=metrics_to_dict(inc_m),
        objective=inc[1],
        meets_slo=inc[0],
        path=path,
        path_objective=vals,
        evaluated=int(evaluated),
        space_size=int(table.size * (hs.size if hs is not None else 1)),
        wall_s=time.perf_counter() - t0,
    )


def optimize(
    hw: Hardware,
    model: ModelSpec,
    n_devices: int,
    workload: Workload,
    schemes=SCHEMES,
    space: GridSpace = GridSpace(),
    objective: Objective = Objective(),
    hardware: HardwareSpace | None = None,
    settings: OptimizeSettings = OptimizeSettings(),
    dtypes: tuple | None = None,
    cost_model=None,
) -> OptimizeResult:
    """Search every applicable scheme (:func:`optimize_scheme`) and keep the best.

    Schemes that cannot serve ``model`` (AFD on a dense model) are listed in ``skipped`` with
    the reason. The best is the feasible answer with the highest objective value (if no
    scheme has one, the least penalised).
    """
    t0 = time.perf_counter()
    schemes = [canonical_scheme(s) for s in schemes]
    skipped = applicable_schemes(model, schemes)
    out = {}
    for s in schemes:
        if s in skipped:
            continue
        try:
            out[s] = optimize_scheme(
                hw,
                model,
                n_devices,
                workload,
                s,
                space,
                objective,
                hardware,
                settings,
                dtypes,
                cost_model,
            )
        except ValueError as e:
            if "space on" not in str(e):
                raise
            skipped[s] = "no valid design of this scheme uses exactly this many devices"
    best = None
    if out:
        best = max(out, key=lambda k: (out[k].meets_slo, out[k].objective))
    return OptimizeResult(out, skipped, best, objective, hardware, time.perf_counter() - t0)


def optimum_dict(r: SchemeOptimum, objective: Objective) -> dict:
    """JSON-ready answer: metric keys, ``deployment``, ``objective`` (value), its kind and
    unit, ``meets_slo`` and the hardware (edge units) when it was searched."""
    d = {"scheme": r.scheme, **r.metrics, "deployment": r.deployment()}
    d["objective"] = r.objective
    d["objective_kind"] = objective.kind
    d["objective_unit"] = objective.unit
    d["meets_slo"] = r.meets_slo
    if r.hardware:
        d["hardware"] = {
            HARDWARE_UNITS[k][0]: v / HARDWARE_UNITS[k][1] for k, v in r.hardware.items()
        }
    d["evaluated_exactly"] = r.evaluated
    d["space_size"] = r.space_size
    return d
