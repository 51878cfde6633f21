"""Sharded, streamed sweeps over a design space given as ranges and lists.

A design space (TOML or JSON; :func:`load_space`) fixes one model, hardware, workload and
serving scheme with its deployment, and lists axes::

    scheme = "aggregated"            # aggregated | disaggregated | afd | static
    model = "llama-3.1-8b"
    hardware = "h100-sxm"
    outputs = ["tpot_s", "ttft_s", "throughput_tok_s_per_device"]   # Metrics fields
    chunk = 65536                    # points per compiled call

    [deployment]                     # the scheme's choices (grid column names)
    tp = 1
    max_batch = 256

    [workload]                       # or: workload = "chat" (a preset name or TOML path)
    preset = "chat"                  # base workload; the other keys override it
    concurrency = 64

    [axes]                           # leaf names of diffperf.search sensitivity (SI units)
    "scale.hbm_bw" = { logspace = [0.25, 4.0], num = 20 }     # factor on the reference
    "hardware.accel.peak_bf16_flop_per_s" = { linspace = [5e14, 2e15], num = 10 }
    "workload.concurrency" = [1, 8, 64, 256]
    "deployment.max_batch" = { values = [64, 128, 256] }

``linspace``/``logspace`` take the two end values (not exponents) and ``num``. The cartesian
product of the axes (first axis slowest) is never materialised: point ``i`` of a chunk is
decoded with ``numpy.unravel_index``; each chunk is placed on a 1-D mesh of all local JAX
devices with ``NamedSharding`` (leading axis split) and evaluated by ONE compiled
``jit(vmap)`` call; the next chunk is dispatched before the previous one is copied back.
When JAX runs multi-process (``jax.distributed``: the ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` environment variables, or a SLURM/Open MPI launch that
JAX detects), process ``k`` of ``n`` evaluates chunks ``k, k+n, ...`` on its own devices and
writes its own part file ``<stem>.part<k>-of-<n><suffix>``. ``diffperf sweep`` initialises
``jax.distributed`` from those variables before it imports the model layers (their defaults
are JAX arrays, which start the backend); a script calls ``jax.distributed.initialize()``
before importing diffperf (tests/test_sweep.py runs 2 processes x 2 host devices).
Output: CSV (always) or Parquet (when ``pyarrow`` is importable);
one row per point, the axis values then the outputs and ``feasible``.
"""

import dataclasses
import json
import math
import os
import time
import tomllib
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..deploy import METRIC_KEYS, Workload, load_workload
from ..hardware import load_hardware
from ..model import load_model
from ..stages import PlanError, check_plan, make_plan
from ._grid import canonical_scheme, default_dtypes, make_deployment
from ._sensitivity import (
    Point,
    SensitivityError,
    StaticBatch,
    point_metrics,
    resolve_name,
    set_values,
)


class SweepError(ValueError):
    """A malformed design space (names the file, the key and the value)."""


SCHEMES = ("aggregated", "disaggregated", "afd", "static")
OUTPUTS_DEFAULT = ("ttft_s", "tpot_s", "throughput_tok_s_per_device", "throughput_tok_s_per_user")
_TOP_KEYS = {
    "scheme",
    "model",
    "hardware",
    "workload",
    "outputs",
    "chunk",
    "tau",
    "deployment",
    "axes",
    "description",
}
_PLAN_KEYS = ("tp", "dp", "pp", "ep", "moe_tp")
_DTYPE_KEYS = ("dtype", "moe_dtype", "kv_dtype")


@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept parameter: canonical name and its values (SI)."""

    name: str
    values: np.ndarray


class _CartesianAxes:
    """Shape and size of the cartesian product of ``self.axes``."""

    axes: tuple[Axis, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a.values) for a in self.axes)

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))


@dataclasses.dataclass(frozen=True)
class SweepSpace(_CartesianAxes):
    """A loaded design space: the base design point, the axes and the outputs."""

    point: Point
    axes: tuple[Axis, ...]
    outputs: tuple[str, ...]
    chunk: int = 1 << 16
    tau: float = 0.0
    source: str = "<space>"


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------


def _number(where: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SweepError(f"{where} = {v!r} must be a number")
    x = float(v)
    if not math.isfinite(x):
        raise SweepError(f"{where} = {v!r} must be finite")
    return x


def axis_values(where: str, spec) -> np.ndarray:
    """Values of one axis spec: a list, ``{values}``, ``{linspace, num}``, ``{logspace, num}``."""
    if isinstance(spec, list):
        spec = {"values": spec}
    if not isinstance(spec, dict):
        raise SweepError(
            f"{where} = {spec!r} must be a list or a table with values, linspace or logspace"
        )
    kinds = [k for k in ("values", "linspace", "logspace") if k in spec]
    if len(kinds) != 1:
        raise SweepError(f"{where} needs exactly one of values, linspace, logspace; got {spec!r}")
    extra = sorted(set(spec) - {kinds[0], "num"})
    if extra:
        raise SweepError(f"{where} has unknown key(s) {extra}")
    kind = kinds[0]
    if kind == "values":
        vals = spec["values"]
        if not isinstance(vals, list) or not vals:
            raise SweepError(f"{where}.values = {vals!r} must be a non-empty list")
        return np.asarray([_number(f"{where}.values[{i}]", v) for i, v in enumerate(vals)])
    ends = spec[kind]
    if not isinstance(ends, list) or len(ends) != 2:
        raise SweepError(f"{where}.{kind} = {ends!r} must be [start, stop]")
    a, b = (_number(f"{where}.{kind}[{i}]", v) for i, v in enumerate(ends))
    num = spec.get("num")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise SweepError(f"{where}.num = {num!r} must be a positive integer")
    if kind == "logspace":
        if a <= 0 or b <= 0:
            raise SweepError(f"{where}.logspace = {ends!r} needs positive end values")
        return np.geomspace(a, b, num)
    return np.linspace(a, b, num)


def _read(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SweepError(f"{path}: cannot read design space: {e.strerror}") from None
    if path.suffix == ".json":
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SweepError(f"{path}: malformed JSON: {e}") from None
    else:
        try:
            d = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SweepError(f"{path}: malformed TOML: {e}") from None
    if not isinstance(d, dict):
        raise SweepError(f"{path}: the design space must be a table/object")
    return d


def build_deployment(scheme: str, model, table: dict, where: str = "deployment"):
    """The scheme's deployment from a table of grid column names (defaults filled in).

    ``static``: ``tp, dp, pp, ep, moe_tp, batch, max_num_tokens``; ``aggregated``: the plan
    keys plus ``instances, max_batch, max_num_tokens``; ``disaggregated``/``afd``: the
    columns of :func:`diffperf.search.make_deployment` (``prefill_tp``, ``decode_max_batch``,
    ``attention_devices``, ...). Number formats: ``dtype``, ``moe_dtype``, ``kv_dtype``.
    """
    if scheme not in SCHEMES:
        try:
            scheme = canonical_scheme(scheme)
        except ValueError:
            raise SweepError(f"scheme = {scheme!r} must be one of {', '.join(SCHEMES)}") from None
    table = dict(table)
    dt = {k: table.pop(k, None) for k in _DTYPE_KEYS}
    for k, v in dt.items():
        if v is not None and not isinstance(v, str):
            raise SweepError(f"{where}.{k} = {v!r} must be a string")
    dtypes = default_dtypes(model, dt["dtype"], dt["moe_dtype"], dt["kv_dtype"])
    nums = {k: _number(f"{where}.{k}", v) for k, v in table.items()}

    def plan(prefix: str):
        degs = {k: nums.pop(prefix + k, None) for k in _PLAN_KEYS}
        for k, v in degs.items():
            if v is not None and (v < 1 or v != round(v)):
                raise SweepError(f"{where}.{prefix}{k} = {v:g} must be a positive integer")
        try:
            p = make_plan(
                model,
                tp=int(degs["tp"] or 1),
                pp=int(degs["pp"] or 1),
                dp=int(degs["dp"] or 1),
                ep=None if degs["ep"] is None else int(degs["ep"]),
                moe_tp=None if degs["moe_tp"] is None else int(degs["moe_tp"]),
                dtype=dtypes[0],
                moe_dtype=dtypes[1],
                kv_dtype=dtypes[2],
            )
        except PlanError as e:
            raise SweepError(f"{where}: {e}") from None
        return {prefix + k: float(np.asarray(getattr(p, k))) for k in _PLAN_KEYS}

    if scheme == "static":
        row = plan("")
        p = make_plan(
            model,
            **{k: int(row[k]) for k in _PLAN_KEYS},
            dtype=dtypes[0],
            moe_dtype=dtypes[1],
            kv_dtype=dtypes[2],
        )
        dep = StaticBatch(
            p, batch=nums.pop("batch", 1.0), max_num_tokens=nums.pop("max_num_tokens", 8192.0)
        )
    elif scheme == "aggregated":
        row = plan("")
        row.update(
            instances=nums.pop("instances", 1.0),
            max_batch=nums.pop("max_batch", 256.0),
            max_num_tokens=nums.pop("max_num_tokens", 8192.0),
        )
        dep = make_deployment(scheme, row, dtypes)
    else:
        row = plan("prefill_")
        row.update(
            prefill_instances=nums.pop("prefill_instances", 1.0),
            prefill_max_batch=nums.pop("prefill_max_batch", 1.0),
            max_num_tokens=nums.pop("max_num_tokens", 8192.0),
        )
        if scheme == "disaggregated":
            row.update(plan("decode_"))
            row.update(
                decode_instances=nums.pop("decode_instances", 1.0),
                decode_max_batch=nums.pop("decode_max_batch", 256.0),
            )
        else:
            if not model.has_moe:
                raise SweepError(f"scheme = 'afd' needs a MoE model; {model.name} has none")
            for k in ("attention_devices", "ffn_devices"):
                if k not in nums:
                    raise SweepError(f"{where}: scheme afd needs '{k}'")
            row.update(
                attention_devices=nums.pop("attention_devices"),
                ffn_devices=nums.pop("ffn_devices"),
                attention_tp=nums.pop("attention_tp", 1.0),
                ffn_moe_tp=nums.pop("ffn_moe_tp", 1.0),
                microbatches=nums.pop("microbatches", 2.0),
                decode_batch=nums.pop("decode_batch", 256.0),
                instances=nums.pop("instances", 1.0),
            )
        dep = make_deployment(scheme, row, dtypes)
    if nums:
        raise SweepError(f"{where}: unknown key(s) {sorted(nums)} for scheme {scheme}")
    return dep


def _check_plan_axes(point: Point, axes: tuple[Axis, ...], where: str) -> None:
    """Integer plan degrees on every axis over a plan field; check_plan on their combinations."""
    plan_axes = [a for a in axes if ".plan." in a.name or "_plan." in a.name]
    for a in plan_axes:
        v = a.values
        if np.any(v < 1) or np.any(v != np.round(v)):
            raise SweepError(f"{where}.{a.name} = {v.tolist()} must be positive integers")
    if not plan_axes:
        return
    combos = math.prod(len(a.values) for a in plan_axes)
    if combos > 4096:
        return
    for idx in np.ndindex(*(len(a.values) for a in plan_axes)):
        vals = {a.name: a.values[i] for a, i in zip(plan_axes, idx)}
        p = set_values(point, vals).deployment
        for field in ("plan", "prefill_plan", "decode_plan"):
            plan = getattr(p, field, None)
            if plan is not None:
                try:
                    check_plan(point.model, plan)
                except PlanError as e:
                    raise SweepError(f"{where}: at {vals}: {e}") from None


def load_space(path_or_dict, base_dir: Path | None = None) -> SweepSpace:
    """Parse a design space from a TOML/JSON file or a dict (format in the module docstring)."""
    if isinstance(path_or_dict, dict):
        d, src = path_or_dict, "<space>"
    else:
        p = Path(path_or_dict)
        d, src = _read(p), str(p)
    unknown = sorted(set(d) - _TOP_KEYS)
    if unknown:
        raise SweepError(f"{src}: unknown key(s) {unknown}; keys: {sorted(_TOP_KEYS)}")
    for k in ("scheme", "model", "hardware"):
        if not isinstance(d.get(k), str):
            raise SweepError(f"{src}: '{k}' is missing or not a string")
    try:
        model = load_model(d["model"])
        hw = load_hardware(d["hardware"])
    except ValueError as e:
        raise SweepError(f"{src}: {e}") from None
    wl = d.get("workload", "chat")
    overrides = {}
    if isinstance(wl, dict):
        overrides = dict(wl)
        base = overrides.pop("preset", None)
        if base is None:
            base = Workload(
                isl_tokens=_number(
                    f"{src}: workload.isl_tokens", overrides.pop("isl_tokens", 1024)
                ),
                osl_tokens=_number(f"{src}: workload.osl_tokens", overrides.pop("osl_tokens", 256)),
            )
        wl = base
    try:
        workload = load_workload(wl, **overrides)
    except ValueError as e:
        raise SweepError(f"{src}: {e}") from None
    dep_table = d.get("deployment", {})
    if not isinstance(dep_table, dict):
        raise SweepError(f"{src}: [deployment] must be a table")
    scheme = d["scheme"].strip().lower()
    if scheme not in SCHEMES:
        try:
            scheme = canonical_scheme(scheme)
        except ValueError:
            raise SweepError(
                f"{src}: scheme = {d['scheme']!r} must be one of {', '.join(SCHEMES)}"
            ) from None
    dep = build_deployment(scheme, model, dep_table, f"{src}: deployment")
    point = Point(hw, dep, workload, model)
    outputs = d.get("outputs", list(OUTPUTS_DEFAULT))
    if not isinstance(outputs, list) or not outputs:
        raise SweepError(f"{src}: outputs = {outputs!r} must be a non-empty list of metrics")
    for o in outputs:
        if o not in METRIC_KEYS:
            raise SweepError(f"{src}: outputs: {o!r} is not a metric; metrics: {list(METRIC_KEYS)}")
    raw_axes = d.get("axes")
    if not isinstance(raw_axes, dict) or not raw_axes:
        raise SweepError(f"{src}: [axes] is missing or empty")
    axes = []
    for name, spec in raw_axes.items():
        where = f"{src}: axes.{name}"
        try:
            canon = resolve_name(point, name)
        except SensitivityError as e:
            raise SweepError(f"{src}: axes: {e}") from None
        vals = axis_values(where, spec)
        if canon.startswith("scale.") and np.any(vals <= 0):
            raise SweepError(f"{where} = {vals.tolist()} must be positive factors")
        axes.append(Axis(canon, vals))
    if len({a.name for a in axes}) != len(axes):
        raise SweepError(f"{src}: two axes name the same parameter")
    chunk = d.get("chunk", 1 << 16)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise SweepError(f"{src}: chunk = {chunk!r} must be a positive integer")
    tau = _number(f"{src}: tau", d.get("tau", 0.0))
    _check_plan_axes(point, tuple(axes), src)
    return SweepSpace(point, tuple(axes), tuple(outputs), chunk, tau, src)


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def multiprocess_launch() -> dict | None:
    """Keyword arguments for ``jax.distributed.initialize`` when the environment says this is
    one process of several, else None.

    Explicit: ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID``.
    Implicit: SLURM (``SLURM_NTASKS`` > 1) or Open MPI (``OMPI_COMM_WORLD_SIZE`` > 1), whose
    variables ``jax.distributed.initialize()`` reads itself (empty dict).
    """
    env = os.environ
    keys = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    if all(k in env for k in keys):
        try:
            return {
                "coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
                "num_processes": int(env["JAX_NUM_PROCESSES"]),
                "process_id": int(env["JAX_PROCESS_ID"]),
            }
        except ValueError:
            raise SweepError(
                f"JAX_NUM_PROCESSES = {env['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID = "
                f"{env['JAX_PROCESS_ID']!r} must be integers"
            ) from None
    try:
        if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
            return {}
    except ValueError:
        return None
    return None


def maybe_initialize_distributed() -> tuple[int, int]:
    """Start ``jax.distributed`` when launched multi-process; returns ``(index, count)``.

    ``jax.distributed.initialize`` must run before the JAX backend starts, i.e. before
    diffperf's model layers are imported (their defaults are JAX arrays): a script calls
    ``jax.distributed.initialize()`` first, then imports diffperf; ``diffperf sweep`` does it
    before its imports. Called late, this raises :class:`SweepError` saying so (never a
    half-initialised run that silently evaluates every chunk in every process).
    """
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    kw = multiprocess_launch()
    if kw is None:
        return jax.process_index(), jax.process_count()
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise SweepError(
            "this process was launched as one of several (JAX_COORDINATOR_ADDRESS/"
            "JAX_NUM_PROCESSES/JAX_PROCESS_ID, SLURM or Open MPI) but the JAX backend was "
            "already started by an earlier import, so jax.distributed cannot be initialised; "
            "call jax.distributed.initialize() before importing diffperf"
        )
    jax.distributed.initialize(**kw)
    return jax.process_index(), jax.process_count()


@eqx.filter_jit
def _evaluate_chunk(point: Point, names: tuple[str, ...], outputs: tuple[str, ...], tau, cols):
    def one(vals):
        m = point_metrics(set_values(point, dict(zip(names, vals))), tau)
        out = {k: getattr(m, k) for k in outputs}
        out["feasible"] = m.feasible
        return out

    return jax.vmap(one)(cols)


def _chunk_columns(space: SweepSpace, start: int, stop: int, size: int) -> tuple[np.ndarray, ...]:
    idx = np.arange(start, stop)
    if stop - start < size:  # pad with the chunk's first point (a valid design)
        idx = np.concatenate([idx, np.full(size - (stop - start), start)])
    sub = np.unravel_index(idx, space.shape)
    return tuple(a.values[i] for a, i in zip(space.axes, sub))


class _Writer:
    """CSV (numpy formatting) or Parquet (pyarrow) output, one chunk at a time."""

    def __init__(self, path: Path, columns: list[str], fmt: str):
        self.path, self.columns, self.fmt = path, columns, fmt
        if fmt == "parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise SweepError(
                    f"{path}: Parquet output needs pyarrow (pip install pyarrow); "
                    "write .csv instead"
                ) from None
            self._pa = pa
            schema = pa.schema([(c, pa.float64()) for c in columns])
            self._pq = pq.ParquetWriter(str(path), schema)
        else:
            self._f = open(path, "w")
            self._f.write(",".join(columns) + "\n")

    def write(self, block: np.ndarray):
        if self.fmt == "parquet":
            pa = self._pa
            t = pa.table({c: block[:, i] for i, c in enumerate(self.columns)})
            self._pq.write_table(t)
        else:
            np.savetxt(self._f, block, fmt="%.9g", delimiter=",")

    def close(self):
        if self.fmt == "parquet":
            self._pq.close()
        else:
            self._f.close()


def output_format(path: "str | Path") -> str:
    """``csv`` or ``parquet`` from the file name (SweepError otherwise)."""
    suf = Path(path).suffix.lower()
    if suf == ".csv":
        return "csv"
    if suf in (".parquet", ".pq"):
        return "parquet"
    raise SweepError(f"output = {str(path)!r} must end in .csv or .parquet")


def part_path(path: Path, index: int, count: int) -> Path:
    """This process's output file: ``path`` itself, or ``stem.part<k>-of-<n><suffix>``."""
    if count == 1:
        return path
    return path.with_name(f"{path.stem}.part{index}-of-{count}{path.suffix}")


def _chunking(size: int, chunk: int, devices: list | None):
    """``(devices, chunk, n_chunks, sharding)``: chunks a multiple of the device count (each
    device gets an equal slice), sharded along one ``points`` mesh axis."""
    devices = list(devices or jax.local_devices())
    n_dev = len(devices)
    chunk = max(n_dev, (min(chunk, max(size, 1)) + n_dev - 1) // n_dev * n_dev)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("points",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("points"))
    return devices, chunk, (size + chunk - 1) // chunk, sharding


class _ChunkSink:
    """Evaluated chunks as rows ``(axes, outputs, feasible)``: streamed to ``writer``, kept
    with ``collect``, with each output's finite min/max and the feasible and point counts."""

    def __init__(self, names: tuple, outputs: tuple, collect: bool):
        self.names, self.outputs, self.collect = names, tuple(outputs), collect
        self.columns = [*names, *outputs, "feasible"]
        self.writer = None
        self.stats = {k: [math.inf, -math.inf] for k in outputs}
        self.kept, self.feasible, self.points = [], 0, 0

    def add(self, cols, out: dict, k: int) -> None:
        """The first ``k`` points of a chunk: axis columns ``cols``, outputs ``out``."""
        block = np.empty((k, len(self.columns)))
        for i, v in enumerate(cols):
            block[:, i] = v[:k]
        for j, name in enumerate((*self.outputs, "feasible")):
            block[:, len(self.names) + j] = np.asarray(out[name])[:k]
        for j, name in enumerate(self.outputs):
            col = block[:, len(self.names) + j]
            fin = col[np.isfinite(col)]
            if len(fin):
                self.stats[name][0] = min(self.stats[name][0], float(fin.min()))
                self.stats[name][1] = max(self.stats[name][1], float(fin.max()))
        self.feasible += int(np.sum(block[:, -1] > 0.5))
        self.points += k
        if self.writer is not None:
            self.writer.write(block)
        if self.collect:
            self.kept.append(block)

    def ranges(self) -> dict:
        return {k: {"min": v[0], "max": v[1]} for k, v in self.stats.items()}

    def collected(self) -> dict:
        block = np.concatenate(self.kept) if self.kept else np.empty((0, len(self.columns)))
        return {c: block[:, i] for i, c in enumerate(self.columns)}


def run_sweep(
    space: SweepSpace,
    output: "str | Path | None" = None,
    *,
    devices: list | None = None,
    progress: bool = False,
    collect: bool = False,
    process: tuple[int, int] | None = None,
) -> dict:
    """Evaluate every point of ``space`` in sharded chunks; stream rows to ``output``.

    **Arguments:** the space; ``output``: a ``.csv``/``.parquet`` path (None: no file);
    ``devices``: the devices to shard over (default all local devices); ``progress``: a tqdm
    bar on stderr; ``collect``: also return the columns in memory (small sweeps, tests);
    ``process``: ``(index, count)`` of this process (default from :func:`jax.process_index`).

    **Returns:** a summary dict (points, devices, chunks, wall time, per-output min/max, the
    feasible count, the output path) and, with ``collect``, ``columns``.
    """
    devices, chunk, n_chunks, sharding = _chunking(space.size, space.chunk, devices)
    n_dev = len(devices)
    pidx, pcount = process or (jax.process_index(), jax.process_count())
    mine = list(range(pidx, n_chunks, pcount))
    names = tuple(a.name for a in space.axes)
    sink = _ChunkSink(names, space.outputs, collect)
    out_path = None
    if output is not None:
        out_path = part_path(Path(output), pidx, pcount)
        sink.writer = _Writer(out_path, sink.columns, output_format(output))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(mine) * chunk, unit="pt", unit_scale=True, desc="sweep")
    t0 = time.perf_counter()

    def launch(c):
        s, e = c * chunk, min((c + 1) * chunk, space.size)
        cols = _chunk_columns(space, s, e, chunk)
        dev_cols = tuple(jax.device_put(jnp.asarray(v, dtype=float), sharding) for v in cols)
        out = _evaluate_chunk(space.point, names, space.outputs, space.tau, dev_cols)
        return s, e, cols, out

    def finish(item):
        s, e, cols, out = item
        sink.add(cols, out, e - s)
        if bar is not None:
            bar.update(chunk)

    try:
        pending = None
        for c in mine:
            nxt = launch(c)  # dispatched asynchronously; copy the previous chunk meanwhile
            if pending is not None:
                finish(pending)
            pending = nxt
        if pending is not None:
            finish(pending)
    finally:
        if sink.writer is not None:
            sink.writer.close()
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    summary = {
        "points": sink.points,
        "space_points": space.size,
        "shape": list(space.shape),
        "axes": list(names),
        "outputs": list(space.outputs),
        "devices": n_dev,
        "process": [pidx, pcount],
        "chunk": chunk,
        "chunks": len(mine),
        "feasible": sink.feasible,
        "range": sink.ranges(),
        "output": None if out_path is None else str(out_path),
        "wall_s": wall,
        "points_per_s": sink.points / wall if wall > 0 else None,
    }
    if collect:
        summary["columns"] = sink.collected()
    return summary


# --------------------------------------------------------------------------------------------
# pipelines (diffperf.pipeline): sweep float leaves named by path
# --------------------------------------------------------------------------------------------

PIPELINE_OUTPUTS = (
    "throughput_per_s",
    "e2e_latency_s",
    "ttft_s",
    "throughput_per_device",
    "devices",
    "meets_slo",
)
_PIPELINE_TOP_KEYS = {"pipeline", "outputs", "chunk", "tau", "axes", "description"}


def _pipeline_key(node, key) -> str:
    """One path segment: stages, engines, routes and KV tiers by name, fields by attribute."""
    from ..pipeline import Engine, PlacedStage, Route

    if isinstance(key, jax.tree_util.GetAttrKey):
        return "tiers" if key.name == "kv_tiers" else key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        item = node[key.idx]
        if isinstance(item, (PlacedStage, Engine)):
            return item.name
        if isinstance(item, Route):
            return f"{item.src}.{item.dst}"
        name = getattr(item, "name", None)
        return name if isinstance(name, str) else f"[{key.idx}]"
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    return str(key)


def pipeline_leaf_names(p) -> dict[str, tuple[int, int | None]]:
    """Canonical name -> (leaf index, element index or None) of every float leaf of pipeline
    ``p``: ``stages.<stage>.batching.batch_size``, ``stages.<stage>.share``,
    ``stages.<stage>.stage.hit_rates[0]``, ``routes.<src>.<dst>.fraction``,
    ``engines.<engine>.count``, ``engines.<engine>.tiers.<tier>.bw_bytes_per_s``,
    ``arrival_rate_per_s``, ``slo.e2e_s``, ... (SI units)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(p)
    out: dict[str, tuple[int, int | None]] = {}
    for li, (path, leaf) in enumerate(flat):
        if not (hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)):
            continue
        node, parts = p, []
        for key in path:
            parts.append(_pipeline_key(node, key))
            if isinstance(key, jax.tree_util.GetAttrKey):
                node = getattr(node, key.name)
            elif isinstance(key, jax.tree_util.SequenceKey):
                node = node[key.idx]
            elif isinstance(key, jax.tree_util.DictKey):
                node = node[key.key]
        name = ".".join(parts).replace(".[", "[")
        if leaf.ndim == 0:
            out[name] = (li, None)
        else:
            for k in range(int(leaf.size)):
                out[f"{name}[{k}]"] = (li, k)
    return out


def resolve_pipeline_name(p, name: str, names: dict | None = None) -> str:
    """The canonical leaf name for ``name``: exact, or unique once the ``batching.`` and
    ``stage.`` segments are dropped (``stages.reason.batch_size``)."""
    names = pipeline_leaf_names(p) if names is None else names
    if name in names:
        return name

    def short(n: str) -> str:
        return n.replace(".batching.", ".").replace(".stage.", ".")

    hits = [n for n in names if short(n) == short(name)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise SweepError(f"axes: {name!r} is ambiguous: {hits}")
    examples = [n for n in names if not (".hw." in n or ".model." in n or ".plan." in n)]
    raise SweepError(
        f"axes: {name!r} is not a float leaf of the pipeline; e.g. {examples[:12]} "
        f"({len(names)} in all)"
    )


def set_pipeline_values(p, values: dict, names: dict | None = None):
    """``p`` with the leaves named in ``values`` (canonical names) replaced."""
    names = pipeline_leaf_names(p) if names is None else names
    leaves, tree = jax.tree_util.tree_flatten(p)
    for name, v in values.items():
        li, k = names[name]
        x = jnp.asarray(v, dtype=leaves[li].dtype)
        leaves[li] = x if k is None else leaves[li].at[k].set(x)
    return jax.tree_util.tree_unflatten(tree, leaves)


@dataclasses.dataclass(frozen=True)
class PipelineSweepSpace(_CartesianAxes):
    """A pipeline, the axes (canonical leaf names, SI values) and the outputs
    (:class:`diffperf.pipeline.PipelineResult` scalars)."""

    pipeline: object
    axes: tuple[Axis, ...]
    outputs: tuple[str, ...] = PIPELINE_OUTPUTS
    chunk: int = 1 << 12
    tau: float = 0.0
    source: str = "<pipeline space>"


def load_pipeline_space(path_or_dict, base_dir: Path | None = None) -> PipelineSweepSpace:
    """A pipeline sweep from a TOML/JSON file or dict: ``pipeline`` (TOML path, relative to
    the space file, or example name), ``[axes]`` (leaf name -> values/linspace/logspace),
    optional ``outputs``, ``chunk``, ``tau``."""
    from ..pipeline import PipelineResult, load_pipeline

    if isinstance(path_or_dict, dict):
        d, src = path_or_dict, "<pipeline space>"
    else:
        f = Path(path_or_dict)
        d, src, base_dir = _read(f), str(f), f.parent
    unknown = sorted(set(d) - _PIPELINE_TOP_KEYS)
    if unknown:
        raise SweepError(f"{src}: unknown key(s) {unknown}; keys: {sorted(_PIPELINE_TOP_KEYS)}")
    ref = d.get("pipeline")
    if not isinstance(ref, str):
        raise SweepError(f"{src}: pipeline = {ref!r} must be a TOML path or an example name")
    cand = (base_dir / ref) if base_dir is not None else None
    try:
        pipe = load_pipeline(cand if cand is not None and cand.is_file() else ref)
    except (ValueError, FileNotFoundError) as e:
        raise SweepError(f"{src}: pipeline = {ref!r}: {e}") from None
    fields = {f.name for f in dataclasses.fields(PipelineResult)}
    outputs = d.get("outputs", list(PIPELINE_OUTPUTS))
    if not isinstance(outputs, list) or not outputs:
        raise SweepError(f"{src}: outputs = {outputs!r} must be a non-empty list")
    scalars = fields - {"bottleneck"}
    for o in outputs:
        if o not in scalars:
            raise SweepError(
                f"{src}: outputs: {o!r} is not a pipeline scalar; e.g. {list(PIPELINE_OUTPUTS)}"
            )
    outputs = [o for o in outputs if o != "feasible"]
    raw_axes = d.get("axes")
    if not isinstance(raw_axes, dict) or not raw_axes:
        raise SweepError(f"{src}: [axes] is missing or empty")
    names = pipeline_leaf_names(pipe)
    axes = []
    for name, spec in raw_axes.items():
        try:
            canon = resolve_pipeline_name(pipe, name, names)
        except SweepError as e:
            raise SweepError(f"{src}: {e}") from None
        axes.append(Axis(canon, axis_values(f"{src}: axes.{name}", spec)))
    if len({a.name for a in axes}) != len(axes):
        raise SweepError(f"{src}: two axes name the same parameter")
    chunk = d.get("chunk", 1 << 12)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise SweepError(f"{src}: chunk = {chunk!r} must be a positive integer")
    tau = _number(f"{src}: tau", d.get("tau", 0.0))
    if tau < 0:
        raise SweepError(f"{src}: tau = {tau!r} must be >= 0")
    return PipelineSweepSpace(pipe, tuple(axes), tuple(outputs), chunk, tau, src)


@eqx.filter_jit
def _evaluate_pipeline_chunk(p, names: tuple[str, ...], outputs: tuple[str, ...], tau, cols):
    from ..pipeline import evaluate

    leaf_names = pipeline_leaf_names(p)

    def one(vals):
        r = evaluate(set_pipeline_values(p, dict(zip(names, vals)), leaf_names), tau)
        out = {k: jnp.asarray(getattr(r, k), dtype=float) for k in outputs}
        out["feasible"] = jnp.asarray(r.feasible, dtype=float)
        return out

    return jax.vmap(one)(cols)


def _pipeline_chunk_columns(
    space: PipelineSweepSpace, start: int, stop: int, size: int
) -> tuple[np.ndarray, ...]:
    idx = np.arange(start, stop)
    if stop - start < size:  # pad with the chunk's first point
        idx = np.concatenate([idx, np.full(size - (stop - start), start)])
    sub = np.unravel_index(idx, space.shape)
    return tuple(a.values[i] for a, i in zip(space.axes, sub))


def run_pipeline_sweep(
    space: PipelineSweepSpace,
    output: "str | Path | None" = None,
    *,
    devices: list | None = None,
    progress: bool = False,
    collect: bool = False,
) -> dict:
    """Evaluate every point of a pipeline sweep in vmapped chunks (sharded over ``devices``);
    stream rows (axes, outputs, feasible) to ``output``. **Returns:** the summary dict of
    :func:`run_sweep` (and ``columns`` with ``collect``)."""
    devices, chunk, n_chunks, sharding = _chunking(space.size, space.chunk, devices)
    n_dev = len(devices)
    names = tuple(a.name for a in space.axes)
    sink = _ChunkSink(names, space.outputs, collect)
    if output:
        sink.writer = _Writer(Path(output), sink.columns, output_format(output))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=space.size, unit="pt", unit_scale=True, desc="sweep")
    t0 = time.perf_counter()
    try:
        for c in range(n_chunks):
            s, e = c * chunk, min((c + 1) * chunk, space.size)
            cols = _pipeline_chunk_columns(space, s, e, chunk)
            dev_cols = tuple(jax.device_put(jnp.asarray(v, dtype=float), sharding) for v in cols)
            out = _evaluate_pipeline_chunk(
                space.pipeline, names, space.outputs, space.tau, dev_cols
            )
            sink.add(cols, out, e - s)
            if bar is not None:
                bar.update(e - s)
    finally:
        if sink.writer is not None:
            sink.writer.close()
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    summary = {
        "points": space.size,
        "space_points": space.size,
        "shape": list(space.shape),
        "axes": list(names),
        "outputs": list(space.outputs),
        "devices": n_dev,
        "process": [0, 1],
        "chunk": chunk,
        "chunks": n_chunks,
        "feasible": sink.feasible,
        "range": sink.ranges(),
        "output": None if output is None else str(output),
        "wall_s": wall,
        "points_per_s": space.size / wall if wall > 0 else None,
    }
    if collect:
        summary["columns"] = sink.collected()
    return summary
