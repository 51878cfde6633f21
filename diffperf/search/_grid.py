"""Exact grid over discrete deployments: enumerate, evaluate vectorised, pick, Pareto.

For a model, hardware, a device budget ``N`` and a serving scheme, :func:`enumerate_grid`
lists every valid discrete deployment as columns of a table (one float array per choice):

- Parallel plans of one instance (or one pool's instance): ``tp``, ``dp``, ``pp`` each a
  divisor of ``N`` (``pp <= max_pp`` and the model's layers) with ``tp * dp * pp <= N``,
  ``tp`` dividing the attention heads (GQA: dividing or a multiple of the KV heads); for MoE
  models every ``ep`` dividing both ``tp * dp`` and the experts, with ``moe_tp = tp*dp/ep``
  dividing the expert width (the rules of :func:`diffperf.stages.check_plan`). Plans whose
  weights alone exceed a device's usable memory are dropped before evaluation (they can never
  be feasible); ``n_enumerated`` counts them, ``n_plans`` does not.
- Aggregated: ``instances * tp*dp*pp == N``; ``max_batch`` from the geometric ladder.
- Disaggregated: a prefill plan and a decode plan with ``x`` prefill and ``y`` decode
  instances, ``x * devices_p + y * devices_d == N`` (every split); prefill and decode batch
  limits from their ladders.
- AFD: a prefill plan with ``x`` instances plus ``u`` attention-FFN units of ``A`` attention
  and ``F`` FFN devices, ``x * devices_p + u * (A + F) == N``; ``A`` and ``F`` each divide
  ``N``; ``A`` a multiple of the attention TP degree (which divides the heads), ``F/ffn_moe_tp``
  dividing the experts; FFN shapes whose routed experts alone overflow a device are dropped;
  ``microbatches`` 1..4; decode batch per attention device from the ladder.

Load: with ``load="saturate"`` (default for a closed-loop workload) each design is offered
exactly the concurrency its decode batches hold (``instances * max_batch``; AFD
``instances * A * decode_batch``), which is how a
deployment's throughput/latency point is measured (AIConfigurator, InferenceMAX);
``load="workload"`` keeps the workload's concurrency or arrival rate for every design.

Each scheme's table is one static structure (the scheme class and the plan's number formats),
so it is evaluated by ONE ``jit(vmap(evaluate))`` call (:func:`evaluate_grid`); large tables
are cut into equal, padded chunks of the same compiled function. No Python loop touches a
design. Results (:class:`GridResult`) give the best feasible design (highest output tokens/s
per device meeting the SLOs, memory and rate), why none is feasible, and the Pareto set of
tokens/s/device against tokens/s/user over designs that fit and keep up with the load.
"""

import dataclasses
import importlib
import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..deploy import Metrics, Workload, evaluate, infeasibility_reason, metrics_to_dict
from ..hardware import Hardware
from ..model import ModelSpec
from ..stages import BatchShape, ParallelPlan, memory_usage


SCHEMES = ("aggregated", "disaggregated", "afd")
SCHEME_ALIASES = {
    "agg": "aggregated",
    "aggregated": "aggregated",
    "disagg": "disaggregated",
    "disaggregated": "disaggregated",
    "pd": "disaggregated",
    "afd": "afd",
}
_SCHEME_MODULES = {
    "aggregated": ("._aggregated", "Aggregated"),
    "disaggregated": ("._disaggregated", "Disaggregated"),
    "afd": ("._afd", "AFD"),
}
_PLAN_KEYS = ("tp", "dp", "pp", "ep", "moe_tp")
CHUNK = 1 << 15  # designs per compiled call; larger tables run the same function per chunk


def scheme_class(scheme: str):
    """The scheme's class from ``diffperf.deploy`` (ImportError while it is not available)."""
    mod, cls = _SCHEME_MODULES[canonical_scheme(scheme)]
    m = importlib.import_module(mod, package="diffperf.deploy")
    return getattr(m, cls)


def available_schemes() -> tuple[str, ...]:
    """Schemes whose modules import in this checkout."""
    out = []
    for s in SCHEMES:
        try:
            scheme_class(s)
        except ImportError:
            continue
        out.append(s)
    return tuple(out)


def canonical_scheme(name: str) -> str:
    """``agg``/``disagg``/``pd`` aliases to the canonical scheme name; ValueError otherwise."""
    key = str(name).strip().lower()
    if key not in SCHEME_ALIASES:
        raise ValueError(f"scheme = {name!r} must be one of {', '.join(SCHEMES)}")
    return SCHEME_ALIASES[key]


@dataclasses.dataclass(frozen=True)
class GridSpace:
    """The discrete choices the grid enumerates (static Python config).

    - ``batch_ladder``: decode/running batch limits per instance (sequences).
    - ``prefill_batch_ladder``: prompts per prefill iteration of a disaggregated/AFD prefill
      instance.
    - ``microbatches``: AFD ping-pong micro-batch counts.
    - ``max_pp``: largest pipeline degree.
    - ``max_num_tokens``: the engines' token budget per iteration (TensorRT-LLM default 8192).
    - ``load``: ``"saturate"`` or ``"workload"`` (module docstring).
    - ``prune_memory``: drop plans whose weights alone exceed usable memory.
    - ``max_designs``: refuse tables larger than this (ValueError naming the sizes).
    """

    batch_ladder: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    prefill_batch_ladder: tuple[int, ...] = (1, 2, 4, 8)
    microbatches: tuple[int, ...] = (1, 2, 3, 4)
    max_pp: int = 1
    max_num_tokens: float = 8192.0
    load: str = "saturate"
    prune_memory: bool = True
    max_designs: int = 4_000_000

    def __post_init__(self):
        if self.load not in ("saturate", "workload"):
            raise ValueError(f"GridSpace.load = {self.load!r} must be 'saturate' or 'workload'")
        for name in ("batch_ladder", "prefill_batch_ladder", "microbatches"):
            v = getattr(self, name)
            if not v or any(int(x) < 1 for x in v):
                raise ValueError(f"GridSpace.{name} = {v} must be non-empty positive integers")
        if self.max_pp < 1:
            raise ValueError(f"GridSpace.max_pp = {self.max_pp} must be >= 1")


def geometric_ladder(lo: int, hi: int, factor: int = 2) -> tuple[int, ...]:
    """``lo, lo*factor, ...`` up to ``hi`` (sequences)."""
    out, b = [], max(int(lo), 1)
    while b <= hi:
        out.append(b)
        b *= factor
    return tuple(out)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _i(x) -> int:
    return int(round(float(np.asarray(x))))


# --------------------------------------------------------------------------------------------
# plans of one instance
# --------------------------------------------------------------------------------------------


def enumerate_plans(model: ModelSpec, n_devices: int, max_pp: int = 1) -> dict[str, np.ndarray]:
    """Every valid parallel plan of one instance within ``n_devices`` (module docstring).

    **Returns:** int arrays ``tp, dp, pp, ep, moe_tp, devices`` (one row per plan).
    """
    n = int(n_devices)
    if n < 1:
        raise ValueError(f"devices = {n} must be a positive integer")
    heads = _i(model.num_heads)
    kvh = _i(model.num_kv_heads) if model.attention == "gqa" else 0
    layers = _i(model.num_layers)
    divs = _divisors(n)
    rows = []
    for tp, dp, pp in itertools.product(divs, divs, divs):
        if tp * dp * pp > n or pp > max_pp or pp > layers or heads % tp:
            continue
        if kvh and kvh % tp and tp % kvh:
            continue
        if model.has_moe:
            experts = _i(model.num_experts)
            width = _i(model.moe_intermediate)
            for ep in _divisors(tp * dp):
                moe_tp = tp * dp // ep
                if experts % ep == 0 and width % moe_tp == 0:
                    rows.append((tp, dp, pp, ep, moe_tp))
        else:
            rows.append((tp, dp, pp, 1, 1))
    a = np.array(rows, dtype=np.int64).reshape(-1, 5)
    out = {k: a[:, j] for j, k in enumerate(_PLAN_KEYS)}
    out["devices"] = out["tp"] * out["dp"] * out["pp"]
    return out


def _plan_from(c: dict, prefix: str, dtypes: tuple[str, str, str, str]) -> ParallelPlan:
    wd, md, kd, cd = dtypes
    return ParallelPlan(
        tp=c[prefix + "tp"],
        dp=c[prefix + "dp"],
        pp=c[prefix + "pp"],
        ep=c[prefix + "ep"],
        moe_tp=c[prefix + "moe_tp"],
        weight_dtype=wd,
        moe_dtype=md,
        kv_dtype=kd,
        comm_dtype=cd,
    )


@eqx.filter_jit
def _weight_margin(hw, model, cols, dtypes):
    def one(c):
        mem = memory_usage(hw, model, _plan_from(c, "", dtypes), BatchShape())
        return mem.capacity_bytes - mem.weight_bytes

    return jax.vmap(one)(cols)


def _weights_fit(hw: Hardware, model: ModelSpec, plans: dict, dtypes) -> np.ndarray:
    cols = {k: jnp.asarray(plans[k], dtype=float) for k in _PLAN_KEYS}
    if len(plans["tp"]) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(_weight_margin(hw, model, cols, dtypes)) >= 0


def _select(plans: dict, keep: np.ndarray) -> dict:
    return {k: v[keep] for k, v in plans.items()}


# --------------------------------------------------------------------------------------------
# the design tables
# --------------------------------------------------------------------------------------------


def _cross(*tables: dict) -> dict:
    """Cartesian product of row tables (dicts of equal-length arrays)."""
    sizes = [len(next(iter(t.values()))) for t in tables]
    grids = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")
    out = {}
    for t, g in zip(tables, grids):
        idx = g.reshape(-1)
        for k, v in t.items():
            out[k] = v[idx]
    return out


def _prefixed(plans: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in plans.items()}


def _splits(
    n: int, size_a: np.ndarray, size_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ``(row, x, y)`` with ``x*size_a[row] + y*size_b[row] == n``, ``x, y >= 1``."""
    rows, xs, ys = [], [], []
    for (a, b), idx in _group_rows(size_a, size_b).items():
        for x in range(1, n // a + 1):
            rem = n - x * a
            if rem >= b and rem % b == 0:
                rows.append(idx)
                xs.append(np.full(len(idx), x))
                ys.append(np.full(len(idx), rem // b))
    if not rows:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    return np.concatenate(rows), np.concatenate(xs), np.concatenate(ys)


def _group_rows(a: np.ndarray, b: np.ndarray) -> dict:
    groups: dict = {}
    for i, key in enumerate(zip(a.tolist(), b.tolist())):
        groups.setdefault(key, []).append(i)
    return {k: np.array(v, dtype=np.int64) for k, v in groups.items()}


def _ladder(name: str, values) -> dict:
    return {name: np.asarray(values, dtype=np.int64)}


def _aggregated_table(model, hw, n, space, dtypes) -> tuple[dict, int]:
    plans = enumerate_plans(model, n, space.max_pp)
    plans = _select(plans, n % plans["devices"] == 0)
    n_enum = len(plans["tp"]) * len(space.batch_ladder)
    if space.prune_memory:
        plans = _select(plans, _weights_fit(hw, model, plans, dtypes))
    plans["instances"] = n // plans["devices"]
    t = _cross(plans, _ladder("max_batch", space.batch_ladder))
    t["concurrency"] = t["instances"] * t["max_batch"]
    t["total_devices"] = t["instances"] * t["devices"]
    return t, n_enum


def _disaggregated_table(model, hw, n, space, dtypes, decode_hw) -> tuple[dict, int]:
    plans = enumerate_plans(model, n, space.max_pp)
    p_plans, d_plans = dict(plans), dict(plans)
    pairs_all = _cross(_prefixed(p_plans, "prefill_"), _prefixed(d_plans, "decode_"))
    _, xs, _ = _splits(n, pairs_all["prefill_devices"], pairs_all["decode_devices"])
    n_enum = len(xs) * len(space.prefill_batch_ladder) * len(space.batch_ladder)
    if space.prune_memory:
        p_plans = _select(p_plans, _weights_fit(hw, model, p_plans, dtypes))
        d_plans = _select(d_plans, _weights_fit(decode_hw or hw, model, d_plans, dtypes))
    pairs = _cross(_prefixed(p_plans, "prefill_"), _prefixed(d_plans, "decode_"))
    if len(pairs["prefill_tp"]) == 0:
        return {}, n_enum
    rows, xs, ys = _splits(n, pairs["prefill_devices"], pairs["decode_devices"])
    t = {k: v[rows] for k, v in pairs.items()}
    t["prefill_instances"], t["decode_instances"] = xs, ys
    t = _cross(
        t,
        _ladder("prefill_max_batch", space.prefill_batch_ladder),
        _ladder("decode_max_batch", space.batch_ladder),
    )
    t["concurrency"] = t["decode_instances"] * t["decode_max_batch"]
    t["total_devices"] = (
        t["prefill_instances"] * t["prefill_devices"] + t["decode_instances"] * t["decode_devices"]
    )
    return t, n_enum


def afd_shape_error(model: ModelSpec, attention_devices, attention_tp, ffn_devices, ffn_moe_tp):
    """Why an attention-FFN unit shape is invalid for ``model`` ("" if valid).

    Rules: a MoE model; ``attention_tp`` divides ``attention_devices`` and the heads (GQA:
    divides or is a multiple of the KV heads); ``ffn_moe_tp`` divides ``ffn_devices`` and the
    expert width; ``ep = ffn_devices / ffn_moe_tp`` divides the experts.
    """
    a, atp, f, ftp = (int(v) for v in (attention_devices, attention_tp, ffn_devices, ffn_moe_tp))
    if not model.has_moe:
        return f"{model.name} has no MoE layers (AFD splits the experts off the attention)"
    if min(a, atp, f, ftp) < 1:
        return "attention/FFN devices and TP degrees must be positive integers"
    heads = _i(model.num_heads)
    if a % atp or heads % atp:
        return f"attention_tp = {atp} must divide attention_devices = {a} and the {heads} heads"
    if model.attention == "gqa":
        kvh = _i(model.num_kv_heads)
        if kvh % atp and atp % kvh:
            return f"attention_tp = {atp} neither divides nor is a multiple of {kvh} KV heads"
    if f % ftp or _i(model.moe_intermediate) % ftp:
        return (
            f"ffn_moe_tp = {ftp} must divide ffn_devices = {f} and the expert width "
            f"{_i(model.moe_intermediate)}"
        )
    if _i(model.num_experts) % (f // ftp):
        return (
            f"ffn_devices / ffn_moe_tp = {f // ftp} (expert parallel degree) must divide the "
            f"{_i(model.num_experts)} experts"
        )
    return ""


def _afd_units(model, n: int) -> dict:
    """Attention-FFN unit shapes ``(A, attention_tp, F, ffn_moe_tp)`` within ``n`` devices."""
    heads = _i(model.num_heads)
    kvh = _i(model.num_kv_heads) if model.attention == "gqa" else 0
    experts = _i(model.num_experts)
    width = _i(model.moe_intermediate)
    rows = []
    divs = _divisors(n)
    for a in divs:
        for atp in _divisors(a):
            if heads % atp or (kvh and kvh % atp and atp % kvh):
                continue
            for f in divs:
                if a + f > n:
                    continue
                for ftp in _divisors(f):
                    if experts % (f // ftp) or width % ftp:
                        continue
                    rows.append((a, atp, f, ftp))
    r = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return {
        "attention_devices": r[:, 0],
        "attention_tp": r[:, 1],
        "ffn_devices": r[:, 2],
        "ffn_moe_tp": r[:, 3],
        "unit_devices": r[:, 0] + r[:, 2],
    }


def _expert_bytes_fit(hw, model, units: dict, moe_dtype: str, ffn_hw=None) -> np.ndarray:
    """FFN devices whose routed-expert weights alone fit (a lower bound on their use)."""
    from .._dtypes import get_format

    h = ffn_hw or hw
    cap = float(h.accel.hbm.capacity_bytes) * float(h.accel.usable_memory_fraction)
    per_expert = float(model.expert_param_count()) * get_format(moe_dtype).bytes_per_element
    ep = units["ffn_devices"] // units["ffn_moe_tp"]
    need = (
        float(model.num_moe_layers)
        * float(model.num_experts)
        / ep
        * per_expert
        / units["ffn_moe_tp"]
    )
    return need <= cap


def _afd_table(model, hw, n, space, dtypes) -> tuple[dict, int]:
    if not model.has_moe:
        raise ValueError(
            f"scheme = 'afd' needs a MoE model (attention-FFN disaggregation splits the experts "
            f"off the attention devices); {model.name} has no MoE layers"
        )
    plans = enumerate_plans(model, n, space.max_pp)
    units = _afd_units(model, n)
    n_enum = len(plans["tp"]) * len(units["ffn_devices"])  # before pruning, without splits
    if space.prune_memory:
        plans = _select(plans, _weights_fit(hw, model, plans, dtypes))
        units = _select(units, _expert_bytes_fit(hw, model, units, dtypes[1]))
    pairs = _cross(_prefixed(plans, "prefill_"), units)
    if len(pairs["prefill_tp"]) == 0:
        return {}, 0
    rows, xs, us = _splits(n, pairs["prefill_devices"], pairs["unit_devices"])
    t = {k: v[rows] for k, v in pairs.items()}
    t["prefill_instances"], t["instances"] = xs, us
    t = _cross(
        t,
        _ladder("prefill_max_batch", space.prefill_batch_ladder),
        _ladder("microbatches", space.microbatches),
        _ladder("decode_batch", space.batch_ladder),
    )
    # decode_batch: running sequences per attention device (AFD's definition)
    t["concurrency"] = t["instances"] * t["attention_devices"] * t["decode_batch"]
    t["total_devices"] = (
        t["prefill_instances"] * t["prefill_devices"] + t["instances"] * t["unit_devices"]
    )
    return t, max(n_enum, len(t["instances"]))


# --------------------------------------------------------------------------------------------
# building one design from a row (inside vmap) and evaluating a table
# --------------------------------------------------------------------------------------------


def make_deployment(scheme: str, c: dict, dtypes, pools: dict | None = None):
    """The scheme module for one row ``c`` of a design table (name -> number or tracer).

    ``dtypes``: plan formats ``(weight, moe, kv, comm)``; ``pools``: optional per-pool
    hardware (``prefill``, ``decode``, ``attention``, ``ffn``; None = the main hardware).
    """
    pools = pools or {}
    scheme = canonical_scheme(scheme)
    cls = scheme_class(scheme)
    if scheme == "aggregated":
        return cls(
            plan=_plan_from(c, "", dtypes),
            instances=c["instances"],
            max_batch=c["max_batch"],
            max_num_tokens=c["max_num_tokens"],
        )
    if scheme == "disaggregated":
        return cls(
            prefill_plan=_plan_from(c, "prefill_", dtypes),
            decode_plan=_plan_from(c, "decode_", dtypes),
            prefill_instances=c["prefill_instances"],
            decode_instances=c["decode_instances"],
            prefill_max_batch=c["prefill_max_batch"],
            decode_max_batch=c["decode_max_batch"],
            max_num_tokens=c["max_num_tokens"],
            prefill_hw=pools.get("prefill"),
            decode_hw=pools.get("decode"),
        )
    wd, md, kd, cd = dtypes
    return cls(
        prefill_plan=_plan_from(c, "prefill_", dtypes),
        prefill_instances=c["prefill_instances"],
        prefill_max_batch=c["prefill_max_batch"],
        max_num_tokens=c["max_num_tokens"],
        attention_devices=c["attention_devices"],
        ffn_devices=c["ffn_devices"],
        microbatches=c["microbatches"],
        decode_batch=c["decode_batch"],
        weight_dtype=wd,
        moe_dtype=md,
        kv_dtype=kd,
        comm_dtype=cd,
        attention_tp=c["attention_tp"],
        ffn_moe_tp=c["ffn_moe_tp"],
        instances=c["instances"],
        prefill_hw=pools.get("prefill"),
        attention_hw=pools.get("attention"),
        ffn_hw=pools.get("ffn"),
    )


@eqx.filter_jit
def _evaluate_columns(hw, model, workload, cols, pools, scheme, dtypes, saturate, tau):
    def one(c):
        deploy = make_deployment(scheme, c, dtypes, pools)
        w = workload
        if saturate:
            w = eqx.tree_at(lambda x: x.concurrency, workload, c["concurrency"])
        return evaluate(hw, model, deploy, w, tau)

    return jax.vmap(one)(cols)


# columns that enter the scheme (everything else is bookkeeping)
_INPUT_COLUMNS = {
    "aggregated": (*_PLAN_KEYS, "instances", "max_batch", "max_num_tokens", "concurrency"),
    "disaggregated": (
        *("prefill_" + k for k in _PLAN_KEYS),
        *("decode_" + k for k in _PLAN_KEYS),
        "prefill_instances",
        "decode_instances",
        "prefill_max_batch",
        "decode_max_batch",
        "max_num_tokens",
        "concurrency",
    ),
    "afd": (
        *("prefill_" + k for k in _PLAN_KEYS),
        "prefill_instances",
        "prefill_max_batch",
        "max_num_tokens",
        "attention_devices",
        "ffn_devices",
        "microbatches",
        "decode_batch",
        "attention_tp",
        "ffn_moe_tp",
        "instances",
        "concurrency",
    ),
}


@dataclasses.dataclass(frozen=True)
class GridTable:
    """One scheme's design table: numpy columns (one row per design) plus static context.

    ``columns``: name -> array with one row per design (the discrete choices, the device count
    ``total_devices`` and the offered ``concurrency``); ``dtypes``: the plans' formats
    ``(weight, moe, kv, comm)``; ``n_enumerated``: designs before memory pruning.
    """

    scheme: str
    columns: dict
    dtypes: tuple
    n_enumerated: int

    @property
    def size(self) -> int:
        if not self.columns:
            return 0
        return len(next(iter(self.columns.values())))


def default_dtypes(model: ModelSpec, dtype=None, moe_dtype=None, kv_dtype=None, comm="bf16"):
    """Plan number formats with the defaults of :func:`diffperf.stages.make_plan`."""
    wd = dtype or model.default_dtype
    md = moe_dtype or (dtype if dtype else model.default_dtype)
    return (wd, md, kv_dtype or "bf16", comm)


def enumerate_grid(
    hw: Hardware,
    model: ModelSpec,
    n_devices: int,
    scheme: str,
    space: GridSpace = GridSpace(),
    dtypes: tuple[str, str, str, str] | None = None,
    decode_hw: Hardware | None = None,
) -> GridTable:
    """Every valid discrete deployment of ``scheme`` on exactly ``n_devices`` (see module doc).

    **Arguments:** hardware and model; the device budget; the scheme name; the
    :class:`GridSpace`; plan formats ``(weight, moe, kv, comm)`` (default: the model's); a
    different decode-pool hardware for P/D (memory pruning only).

    **Returns:** a :class:`GridTable`.
    """
    scheme = canonical_scheme(scheme)
    n = int(n_devices)
    if n < 1:
        raise ValueError(f"devices = {n_devices} must be a positive integer")
    dtypes = dtypes or default_dtypes(model)
    if scheme == "aggregated":
        t, n_enum = _aggregated_table(model, hw, n, space, dtypes)
    elif scheme == "disaggregated":
        t, n_enum = _disaggregated_table(model, hw, n, space, dtypes, decode_hw)
    else:
        t, n_enum = _afd_table(model, hw, n, space, dtypes)
    if t:
        size = len(next(iter(t.values())))
        if size > space.max_designs:
            raise ValueError(
                f"the {scheme} grid on {n} devices has {size} designs, more than "
                f"max_designs = {space.max_designs}; lower max_pp or shorten the batch ladders"
            )
        t["max_num_tokens"] = np.full(size, float(space.max_num_tokens))
    return GridTable(scheme, t, tuple(dtypes), int(max(n_enum, len(t.get("concurrency", ())))))


def evaluate_grid(
    hw: Hardware,
    model: ModelSpec,
    table: GridTable,
    workload: Workload,
    tau: float = 0.0,
    load: str = "saturate",
    pools: dict | None = None,
) -> Metrics:
    """Metrics of every design of ``table`` (leading axis = rows), one ``jit(vmap)`` call.

    Tables above ``CHUNK`` rows are padded to a multiple of it and run chunk by chunk through
    the same compiled function. ``load``: ``"saturate"`` offers each design its own batch
    capacity as closed-loop concurrency; ``"workload"`` keeps the workload's load.
    """
    n = table.size
    saturate = load == "saturate" and workload.load_mode == "closed"
    names = _INPUT_COLUMNS[table.scheme]
    cols = {k: np.asarray(table.columns[k], dtype=float) for k in names}
    pools = pools or {}
    if n <= CHUNK:  # pad to 8^k rows (>= 512): few distinct shapes, so few compilations
        size = 8 ** max(int(math.ceil(math.log(max(n, 1), 8) - 1e-9)), 3)
        chunks = [(0, n, min(size, CHUNK))]
    else:
        chunks = [(s, min(s + CHUNK, n), CHUNK) for s in range(0, n, CHUNK)]
    outs = []
    for s, e, size in chunks:
        c = {k: _pad(v[s:e], size) for k, v in cols.items()}
        m = _evaluate_columns(
            hw, model, workload, c, pools, table.scheme, table.dtypes, saturate, tau
        )
        outs.append(jax.tree_util.tree_map(lambda x, k=e - s: np.asarray(x)[:k], m))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outs)


def _pad(v: np.ndarray, size: int) -> jax.Array:
    """Pad by repeating the first row (a valid design) so padded rows stay finite."""
    if len(v) < size:
        fill = v[:1] if len(v) else np.ones(1)
        v = np.concatenate([v, np.repeat(fill, size - len(v))])
    return jnp.asarray(v, dtype=float)


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


def pareto_indices(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Indices of the non-dominated points maximising both ``x`` and ``y``, by ``x``."""
    idx = np.arange(len(x)) if mask is None else np.flatnonzero(mask)
    if len(idx) == 0:
        return idx
    order = idx[np.lexsort((-y[idx], -x[idx]))]  # x desc, then y desc
    keep, best_y = [], -np.inf
    for i in order:
        if y[i] > best_y:
            keep.append(i)
            best_y = y[i]
    return np.array(keep[::-1], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class GridResult:
    """One scheme's grid: the table, its metrics (numpy, leading axis) and the selections.

    ``best``: index of the highest output tokens/s per device among feasible designs (None if
    none); ``pareto``: indices of the tokens/s/device-vs-tokens/s/user frontier over designs
    that fit in memory and keep up with the load; ``reason``: why none is feasible ("" if one
    is).
    """

    table: GridTable
    metrics: Metrics
    best: int | None
    pareto: np.ndarray
    reason: str
    wall_s: float = 0.0

    @property
    def scheme(self) -> str:
        return self.table.scheme

    def deployment(self, i: int) -> dict:
        """The discrete choices of design ``i`` as a JSON-friendly dict."""
        return deployment_dict(self.table, i)

    def design(self, i: int) -> dict:
        """Metrics (the keys of ``serve``) plus ``deployment`` of design ``i``."""
        d = metrics_to_dict(self.metrics, i)
        d["deployment"] = self.deployment(i)
        return d

    def summary(self, pareto: bool = True) -> dict:
        m = self.metrics
        feas = np.asarray(m.feasible) > 0.5 if self.table.size else np.zeros(0, bool)
        out = {
            "scheme": self.scheme,
            "plans": self.table.size,
            "plans_enumerated": self.table.n_enumerated,
            "feasible": int(feas.sum()),
            "best": None if self.best is None else self.design(self.best),
            "reason": self.reason,
            "wall_s": self.wall_s,
        }
        if pareto:
            out["pareto"] = [
                {
                    "throughput_tok_s_per_user": float(m.throughput_tok_s_per_user[i]),
                    "throughput_tok_s_per_device": float(m.throughput_tok_s_per_device[i]),
                    "ttft_s": float(m.ttft_s[i]),
                    "tpot_s": float(m.tpot_s[i]),
                    "meets_slo": bool(feas[i]),
                    "deployment": self.deployment(int(i)),
                }
                for i in self.pareto
            ]
        return out


def deployment_dict(table: GridTable, i: int) -> dict:
    c = {k: v[i] for k, v in table.columns.items()}
    wd, md, kd, _ = table.dtypes

    def plan(prefix):
        return {k: int(c[prefix + k]) for k in _PLAN_KEYS}

    d: dict = {"scheme": table.scheme, "devices": int(c["total_devices"])}
    if table.scheme == "aggregated":
        d.update(instances=int(c["instances"]), plan=plan(""), max_batch=int(c["max_batch"]))
    elif table.scheme == "disaggregated":
        d.update(
            prefill_instances=int(c["prefill_instances"]),
            prefill_plan=plan("prefill_"),
            prefill_max_batch=int(c["prefill_max_batch"]),
            decode_instances=int(c["decode_instances"]),
            decode_plan=plan("decode_"),
            decode_max_batch=int(c["decode_max_batch"]),
        )
    else:
        d.update(
            prefill_instances=int(c["prefill_instances"]),
            prefill_plan=plan("prefill_"),
            prefill_max_batch=int(c["prefill_max_batch"]),
            instances=int(c["instances"]),
            attention_devices=int(c["attention_devices"]),
            attention_tp=int(c["attention_tp"]),
            ffn_devices=int(c["ffn_devices"]),
            ffn_moe_tp=int(c["ffn_moe_tp"]),
            microbatches=int(c["microbatches"]),
            decode_batch=int(c["decode_batch"]),
        )
    d.update(
        concurrency=int(c["concurrency"]),
        max_num_tokens=int(c["max_num_tokens"]),
        dtype=wd,
        moe_dtype=md,
        kv_dtype=kd,
    )
    return d


def _no_feasible_reason(table: GridTable, m: Metrics) -> str:
    n = table.size
    if n == 0:
        if table.n_enumerated == 0:
            return "no valid plan of this scheme uses exactly this many devices"
        return (
            f"none of the {table.n_enumerated} enumerated designs fits: the model's weights "
            f"alone exceed a device's usable memory in every plan"
        )
    counts = []
    for flag, label in (
        (m.memory_ok, "do not fit in memory"),
        (m.rate_ok, "cannot keep up with the load"),
        (m.slo_ttft_ok, "miss the TTFT SLO"),
        (m.slo_tpot_ok, "miss the TPOT SLO"),
    ):
        k = int((np.asarray(flag) < 0.5).sum())
        if k:
            counts.append(f"{k} {label}")
    closest = int(np.argmin(np.asarray(m.penalty)))
    return (
        f"no feasible design among {n}: " + ", ".join(counts) + f"; closest: "
        f"{infeasibility_reason(m, closest)}"
    )


def select(table: GridTable, m: Metrics, wall_s: float = 0.0) -> GridResult:
    """Best feasible design, Pareto set and reason from evaluated metrics."""
    if table.size == 0:
        return GridResult(table, m, None, np.zeros(0, np.int64), _no_feasible_reason(table, m))
    feas = np.asarray(m.feasible) > 0.5
    thr = np.asarray(m.throughput_tok_s_per_device)
    best = None
    if feas.any():
        best = int(np.flatnonzero(feas)[np.argmax(thr[feas])])
    servable = (np.asarray(m.memory_ok) > 0.5) & (np.asarray(m.rate_ok) > 0.5)
    par = pareto_indices(np.asarray(m.throughput_tok_s_per_user), thr, servable)
    reason = "" if best is not None else _no_feasible_reason(table, m)
    return GridResult(table, m, best, par, reason, wall_s)


def _empty_metrics() -> Metrics:
    z = np.zeros(0)
    names = [f.name for f in dataclasses.fields(Metrics)]
    return Metrics(**{k: z for k in names})


def grid_search(
    hw: Hardware,
    model: ModelSpec,
    n_devices: int,
    workload: Workload,
    schemes=SCHEMES,
    space: GridSpace = GridSpace(),
    dtypes: tuple[str, str, str, str] | None = None,
    tau: float = 0.0,
) -> dict[str, GridResult]:
    """Enumerate and evaluate every scheme's grid on ``n_devices``; one result per scheme.

    A scheme whose module is missing raises ImportError; AFD on a dense model raises
    ValueError (use :func:`applicable_schemes` to filter first).
    """
    import time

    out = {}
    for s in schemes:
        t0 = time.perf_counter()
        s = canonical_scheme(s)
        table = enumerate_grid(hw, model, n_devices, s, space, dtypes)
        if table.size:
            m = evaluate_grid(hw, model, table, workload, tau, space.load)
        else:
            m = _empty_metrics()
        out[s] = dataclasses.replace(select(table, m), wall_s=time.perf_counter() - t0)
    return out


def applicable_schemes(model: ModelSpec, schemes=SCHEMES) -> dict[str, str]:
    """``{scheme: reason}`` for schemes that cannot serve ``model`` or are not available."""
    out = {}
    for s in schemes:
        s = canonical_scheme(s)
        if s == "afd" and not model.has_moe:
            out[s] = f"{model.name} has no MoE layers (AFD splits experts off attention)"
            continue
        try:
            scheme_class(s)
        except ImportError as e:
            out[s] = f"scheme module not available ({e})"
    return out
