"""Pipelines from TOML files (human units at this edge, SI inside) and their JSON report.

File format (every key is checked; unknown keys, wrong types and bad values raise
:class:`PipelineConfigError` naming the file, the table and the value)::

    name = "rag-reasoning"
    arrival_rate_per_s = 4.0          # offered load (requests/s, Poisson)
    [slo]                              # optional; means, 0 or absent = no target
    e2e_ms = 60000
    ttft_ms = 20000
    [engines.gpu]                      # one table per engine
    hardware = "h100-sxm"              # preset name or device TOML path
    count = 8                          # devices in the pool
    shared_memory = false              # default: true for kind = "cpu" presets
    tiers = { remote = { bandwidth_gb_per_s = 12.5, latency_us = 25 } }  # optional overrides
    [[stages]]                         # in order; routes default to this chain
    name = "search"
    type = "vector_search"             # prefill | decode | agent_loop | encode |
                                       # vector_search | kv_retrieval | cpu
    engine = "cpu"
    share = 0.5                        # fraction of the engine's devices (default: equal split)
    batching = "window"                # static | window | continuous (default continuous)
    batch_size = 32                    # static: B; window/continuous: largest batch
    window_ms = 5
    first_token = false                # the stage that yields the first answer token
    ...type-specific keys (see STAGE_KEYS)...
    [[routes]]                         # optional DAG; fractions out of a stage sum to <= 1
    from = "router"
    to = "big"
    fraction = 0.3

Models: a preset name (``diffperf presets``), a config.json path, or one of the built-in
small models in :data:`SMALL_MODELS` (embedding and router models).
"""

import math
import tomllib
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ..hardware import load_hardware
from ..model import ModelSpec, load_model
from ..stages import make_plan
from ._kv_tiers import TIER_NAMES, KVTier, default_kv_tiers
from ._pipeline import (
    BATCHING_KINDS,
    Batching,
    Engine,
    Pipeline,
    PipelineError,
    PipelineResult,
    PipelineSLO,
    PlacedStage,
    Route,
    topo_order,
)
from ._stages import (
    STAGE_TYPES,
    AgentLoop,
    CPUWork,
    Decode,
    Encode,
    KVRetrieval,
    Prefill,
    VectorSearch,
)
from ._vector_search import INDEX_KINDS, VectorIndex


class PipelineConfigError(PipelineError):
    """A pipeline TOML file that is unreadable, malformed or has an invalid key or value."""


def _small(name, layers, hidden, heads, kv_heads, ffn, vocab, gated):
    return ModelSpec(
        name=name,
        attention="gqa",
        gated_mlp=gated,
        has_moe=False,
        tie_word_embeddings=True,
        default_dtype="bf16",
        num_layers=layers,
        num_dense_layers=layers,
        hidden_size=hidden,
        vocab_size=vocab,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=hidden // heads,
        ffn_intermediate=ffn,
    )


# Dimensions from each model's Hugging Face config.json.
SMALL_MODELS = {
    # BAAI/bge-large-en-v1.5: BERT-large encoder, 335M parameters
    "bge-large-en-v1.5": lambda: _small("bge-large-en-v1.5", 24, 1024, 16, 16, 4096, 30522, False),
    # BAAI/bge-small-en-v1.5: 33M parameters
    "bge-small-en-v1.5": lambda: _small("bge-small-en-v1.5", 12, 384, 12, 12, 1536, 30522, False),
    # Qwen/Qwen2.5-0.5B-Instruct (as a router/classifier): 24 layers, GQA 14/2, head_dim 64
    "qwen2.5-0.5b": lambda: _small("qwen2.5-0.5b", 24, 896, 14, 2, 4864, 151936, True),
}

COMMON_KEYS = {
    "name",
    "type",
    "engine",
    "share",
    "batching",
    "batch_size",
    "window_ms",
    "first_token",
    "host_engine",
}
PLAN_KEYS = {"model", "tp", "pp", "dtype", "kv_dtype"}
STAGE_KEYS = {
    "prefill": PLAN_KEYS | {"input_tokens", "cached_tokens"},
    "decode": PLAN_KEYS | {"input_tokens", "output_tokens", "thinking_tokens"},
    "agent_loop": PLAN_KEYS
    | {"calls", "input_tokens", "output_tokens", "tool_tokens", "tool_wait_ms"},
    "encode": PLAN_KEYS | {"tokens", "role"},
    "vector_search": {
        "index",
        "corpus_vectors",
        "dim",
        "bytes_per_elem",
        "nlist",
        "nprobe",
        "pq_bytes",
        "degree",
        "ef_search",
        "top_k",
        "queries_per_request",
        "compute_dtype",
    },
    "kv_retrieval": PLAN_KEYS | {"prefix_tokens", "hit_rates", "retrieve_weight"},
    "cpu": {"flop_per_request", "bytes_per_request", "per_request_ms", "parallel_lanes"},
}
ENGINE_KEYS = {"hardware", "count", "shared_memory", "tiers"}
TIER_KEYS = {"bandwidth_gb_per_s", "latency_us", "capacity_gb"}


def examples_dir() -> Path:
    return Path(__file__).resolve().parent / "examples"


def list_examples() -> list[str]:
    """Names of the shipped example pipelines."""
    return sorted(p.stem for p in examples_dir().glob("*.toml"))


class _Ctx:
    def __init__(self, path: str):
        self.path = path

    def err(self, where: str, msg: str) -> PipelineConfigError:
        return PipelineConfigError(f"{self.path}: {where}: {msg}")

    def num(
        self,
        table: dict,
        key: str,
        where: str,
        default=None,
        *,
        positive=False,
        integer=False,
        at_most=None,
    ):
        if key not in table:
            if default is None:
                raise self.err(where, f"missing required key '{key}'")
            return float(default)
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.err(where, f"{key} = {v!r} must be a number")
        x = float(v)
        if not math.isfinite(x) or x < 0 or (positive and x == 0):
            need = "positive" if positive else "non-negative"
            raise self.err(where, f"{key} = {v!r} must be a finite {need} number")
        if integer and x != round(x):
            raise self.err(where, f"{key} = {v!r} must be an integer")
        if at_most is not None and x > at_most:
            raise self.err(where, f"{key} = {v!r} must be <= {at_most:g}")
        return x

    def text(self, table: dict, key: str, where: str, default=None, choices=None) -> str:
        if key not in table:
            if default is None:
                raise self.err(where, f"missing required key '{key}'")
            return default
        v = table[key]
        if not isinstance(v, str):
            raise self.err(where, f"{key} = {v!r} must be a string")
        if choices is not None and v not in choices:
            raise self.err(where, f"{key} = {v!r} must be one of {list(choices)}")
        return v

    def flag(self, table: dict, key: str, where: str, default: bool) -> bool:
        v = table.get(key, default)
        if not isinstance(v, bool):
            raise self.err(where, f"{key} = {v!r} must be true or false")
        return v

    def keys(self, table: dict, allowed: set, where: str):
        extra = sorted(set(table) - allowed)
        if extra:
            raise self.err(where, f"unknown key(s) {extra}; allowed: {sorted(allowed)}")


def _model(ctx: _Ctx, name: str, where: str) -> ModelSpec:
    if name.lower() in SMALL_MODELS:
        return SMALL_MODELS[name.lower()]()
    try:
        return load_model(name)
    except ValueError as e:
        raise ctx.err(where, f"model = {name!r}: {e}") from None


def _plan(ctx: _Ctx, t: dict, where: str):
    model = _model(ctx, ctx.text(t, "model", where), where)
    tp = int(ctx.num(t, "tp", where, 1, positive=True, integer=True))
    pp = int(ctx.num(t, "pp", where, 1, positive=True, integer=True))
    try:
        plan = make_plan(
            model,
            tp=tp,
            pp=pp,
            dtype=t.get("dtype"),
            kv_dtype=t.get("kv_dtype"),
        )
    except ValueError as e:
        raise ctx.err(where, f"plan: {e}") from None
    return model, plan


def _engine(ctx: _Ctx, name: str, t: dict) -> Engine:
    where = f"[engines.{name}]"
    if not isinstance(t, dict):
        raise ctx.err(where, "must be a table")
    ctx.keys(t, ENGINE_KEYS, where)
    hw_name = ctx.text(t, "hardware", where)
    try:
        hw = load_hardware(hw_name)
    except ValueError as e:
        raise ctx.err(where, f"hardware = {hw_name!r}: {e}") from None
    count = ctx.num(t, "count", where, 1, positive=True)
    shared = ctx.flag(t, "shared_memory", where, hw.accel.kind == "cpu")
    tiers = list(default_kv_tiers(hw))
    over = t.get("tiers", {})
    if not isinstance(over, dict):
        raise ctx.err(where, f"tiers = {over!r} must be a table of tier tables")
    for tname, tt in over.items():
        tw = f"{where} tiers.{tname}"
        if tname not in TIER_NAMES:
            raise ctx.err(tw, f"tier {tname!r} is not one of {list(TIER_NAMES)}")
        if not isinstance(tt, dict):
            raise ctx.err(tw, "must be a table")
        ctx.keys(tt, TIER_KEYS, tw)
        i = TIER_NAMES.index(tname)
        old = tiers[i]
        tiers[i] = KVTier(
            tname,
            ctx.num(tt, "bandwidth_gb_per_s", tw, float(old.bw_bytes_per_s) / 1e9, positive=True)
            * 1e9,
            ctx.num(tt, "latency_us", tw, float(old.latency_s) * 1e6) * 1e-6,
            ctx.num(tt, "capacity_gb", tw, float(old.capacity_bytes) / 1e9) * 1e9,
        )
    return Engine(name, hw, count, tuple(tiers), shared)


def _stage(ctx: _Ctx, i: int, t: dict, engines: dict, n_on_engine: dict) -> PlacedStage:
    where = f"[[stages]] #{i + 1}"
    if not isinstance(t, dict):
        raise ctx.err(where, "must be a table")
    name = ctx.text(t, "name", where)
    where = f"stage {name!r}"
    kind = ctx.text(t, "type", where, choices=list(STAGE_TYPES))
    ctx.keys(t, COMMON_KEYS | STAGE_KEYS[kind], where)
    engine = ctx.text(t, "engine", where)
    if engine not in engines:
        raise ctx.err(where, f"engine = {engine!r} is not one of {sorted(engines)}")
    host = t.get("host_engine", "")
    if host and host not in engines:
        raise ctx.err(where, f"host_engine = {host!r} is not one of {sorted(engines)}")
    share = ctx.num(t, "share", where, 1.0 / n_on_engine[engine], positive=True, at_most=1.0)
    bkind = ctx.text(t, "batching", where, "continuous", choices=BATCHING_KINDS)
    bs = ctx.num(t, "batch_size", where, 1, positive=True)
    window = ctx.num(t, "window_ms", where, 0.0) * 1e-3
    if bkind == "window" and window <= 0:
        raise ctx.err(where, "batching = 'window' needs window_ms > 0")
    first = ctx.flag(t, "first_token", where, False)
    n = ctx.num
    if kind == "prefill":
        model, plan = _plan(ctx, t, where)
        st = Prefill(
            model,
            plan,
            n(t, "input_tokens", where, positive=True),
            n(t, "cached_tokens", where, 0.0),
        )
    elif kind == "decode":
        model, plan = _plan(ctx, t, where)
        st = Decode(
            model,
            plan,
            n(t, "input_tokens", where, positive=True),
            n(t, "output_tokens", where, positive=True),
            n(t, "thinking_tokens", where, 0.0),
        )
    elif kind == "agent_loop":
        model, plan = _plan(ctx, t, where)
        st = AgentLoop(
            model,
            plan,
            n(t, "calls", where, positive=True),
            n(t, "input_tokens", where, positive=True),
            n(t, "output_tokens", where, positive=True),
            n(t, "tool_tokens", where, 0.0),
            n(t, "tool_wait_ms", where, 0.0) * 1e-3,
        )
    elif kind == "encode":
        model, plan = _plan(ctx, t, where)
        st = Encode(
            model,
            plan,
            n(t, "tokens", where, positive=True),
            ctx.text(t, "role", where, "embed", choices=("embed", "router")),
        )
    elif kind == "vector_search":
        ik = ctx.text(t, "index", where, choices=INDEX_KINDS)
        idx = VectorIndex(
            ik,
            n(t, "corpus_vectors", where, positive=True),
            n(t, "dim", where, positive=True),
            n(t, "bytes_per_elem", where, 4.0, positive=True),
            n(t, "nlist", where, 1.0, positive=True),
            n(t, "nprobe", where, 1.0, positive=True),
            n(t, "pq_bytes", where, 0.0 if ik != "ivf_pq" else None, positive=ik == "ivf_pq"),
            n(t, "degree", where, 32.0, positive=True),
            n(t, "ef_search", where, 64.0, positive=True),
            n(t, "top_k", where, 10.0, positive=True),
            ctx.text(t, "compute_dtype", where, "fp32"),
        )
        if ik == "ivf_pq" and float(idx.nprobe) > float(idx.nlist):
            raise ctx.err(where, f"nprobe = {float(idx.nprobe):g} must be <= nlist")
        st = VectorSearch(idx, n(t, "queries_per_request", where, 1.0, positive=True))
    elif kind == "kv_retrieval":
        model, plan = _plan(ctx, t, where)
        hr = t.get("hit_rates")
        if not isinstance(hr, dict) or not hr:
            raise ctx.err(where, f"hit_rates = {hr!r} must be a table {{tier = fraction}}")
        tier_names = [tt.name for tt in engines[engine].kv_tiers]
        for k in hr:
            if k not in tier_names:
                raise ctx.err(where, f"hit_rates.{k}: tier {k!r} is not one of {tier_names}")
        rates = [n(hr, k, f"{where} hit_rates", at_most=1.0) for k in hr]
        if sum(rates) > 1.0 + 1e-12:
            raise ctx.err(where, f"hit_rates sum to {sum(rates):g} > 1 (tiers are exclusive)")
        st = KVRetrieval(
            model,
            plan,
            n(t, "prefix_tokens", where, positive=True),
            jnp.asarray(rates, dtype=float),
            tuple(hr),
            n(t, "retrieve_weight", where, 1.0, at_most=1.0),
        )
    else:
        st = CPUWork(
            n(t, "flop_per_request", where, 0.0),
            n(t, "bytes_per_request", where, 0.0),
            n(t, "per_request_ms", where, 0.0) * 1e-3,
            n(t, "parallel_lanes", where, 1.0, positive=True),
        )
    return PlacedStage(name, st, engine, Batching(bkind, bs, window), share, first, host)


def _resolve(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    if s in list_examples():
        return examples_dir() / f"{s}.toml"
    p = Path(s)
    if not p.exists():
        raise PipelineConfigError(
            f"pipeline config {s!r} is neither an example ({', '.join(list_examples())}) "
            f"nor an existing TOML file"
        )
    return p


def load_pipeline(name_or_path: "str | Path | Pipeline") -> Pipeline:
    """Load a pipeline from a TOML file or a shipped example name (see module docstring)."""
    if isinstance(name_or_path, Pipeline):
        return name_or_path
    path = _resolve(name_or_path)
    ctx = _Ctx(str(path))
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise PipelineConfigError(f"{path}: malformed TOML: {e}") from None
    except OSError as e:
        raise PipelineConfigError(f"{path}: cannot read: {e.strerror}") from None
    ctx.keys(raw, {"name", "arrival_rate_per_s", "slo", "engines", "stages", "routes"}, "top level")
    lam = ctx.num(raw, "arrival_rate_per_s", "top level", positive=True)
    slo_t = raw.get("slo", {})
    if not isinstance(slo_t, dict):
        raise ctx.err("[slo]", "must be a table")
    ctx.keys(slo_t, {"e2e_ms", "ttft_ms"}, "[slo]")
    slo = PipelineSLO(
        ctx.num(slo_t, "e2e_ms", "[slo]", 0.0) * 1e-3,
        ctx.num(slo_t, "ttft_ms", "[slo]", 0.0) * 1e-3,
    )
    eng_t = raw.get("engines")
    if not isinstance(eng_t, dict) or not eng_t:
        raise ctx.err("[engines]", "at least one [engines.<name>] table is required")
    engines = {k: _engine(ctx, k, v) for k, v in eng_t.items()}
    st_t = raw.get("stages")
    if not isinstance(st_t, list) or not st_t:
        raise ctx.err("[[stages]]", "at least one [[stages]] entry is required")
    n_on = {k: 0 for k in engines}
    for t in st_t:
        if isinstance(t, dict) and isinstance(t.get("engine"), str) and t["engine"] in n_on:
            n_on[t["engine"]] += 1
    stages = [_stage(ctx, i, t, engines, n_on) for i, t in enumerate(st_t)]
    for e in engines:
        tot = sum(float(s.share) for s in stages if s.engine == e)
        if tot > 1.0 + 1e-9:
            raise ctx.err(f"[engines.{e}]", f"stage shares sum to {tot:g} > 1")
    names = [s.name for s in stages]
    routes_t = raw.get("routes")
    if routes_t is None:
        routes = [Route(a, b, 1.0) for a, b in zip(names[:-1], names[1:])]
    else:
        if not isinstance(routes_t, list):
            raise ctx.err("[[routes]]", "must be an array of tables")
        routes = []
        for i, r in enumerate(routes_t):
            w = f"[[routes]] #{i + 1}"
            if not isinstance(r, dict):
                raise ctx.err(w, "must be a table")
            ctx.keys(r, {"from", "to", "fraction"}, w)
            a = ctx.text(r, "from", w, choices=names)
            b = ctx.text(r, "to", w, choices=names)
            routes.append(Route(a, b, ctx.num(r, "fraction", w, 1.0, at_most=1.0)))
        for a in names:
            tot = sum(float(r.fraction) for r in routes if r.src == a)
            if tot > 1.0 + 1e-9:
                raise ctx.err("[[routes]]", f"fractions out of {a!r} sum to {tot:g} > 1")
    try:
        p = Pipeline(tuple(stages), tuple(routes), tuple(engines.values()), lam, slo)
    except PipelineError as e:
        raise PipelineConfigError(f"{path}: {e}") from None
    return p


def pipeline_report(p: Pipeline, r: PipelineResult) -> dict:
    """A JSON-ready dict (human units: ms, requests/s, GB) of a concrete evaluation."""
    f = lambda x: float(np.asarray(x))  # noqa: E731
    stages = []
    for i, s in enumerate(p.stages):
        stages.append(
            {
                "name": s.name,
                "type": s.stage.kind,
                "engine": s.engine,
                "batching": s.batching.kind,
                "share": f(s.share),
                "instances": f(r.instances[i]),
                "visits": f(r.visits[i]),
                "arrival_per_s": f(r.arrival_per_s[i]),
                "batch": f(r.batch[i]),
                "service_ms": 1e3 * f(r.service_s[i]),
                "wait_ms": 1e3 * f(r.wait_s[i]),
                "latency_ms": 1e3 * f(r.latency_s[i]),
                "capacity_per_s": f(r.capacity_per_s[i]),
                "utilisation": f(r.utilisation[i]),
                "contention_factor": f(r.contention[i]),
                "memory_margin_gb": f(r.memory_margin_bytes[i]) / 1e9,
            }
        )
    bn = int(np.asarray(r.bottleneck))
    return {
        "arrival_rate_per_s": f(p.arrival_rate_per_s),
        "throughput_per_s": f(r.throughput_per_s),
        "bottleneck": p.stages[bn].name,
        "e2e_latency_ms": 1e3 * f(r.e2e_latency_s),
        "ttft_ms": 1e3 * f(r.ttft_s),
        "devices": f(r.devices),
        "throughput_per_device": f(r.throughput_per_device),
        "feasible": bool(np.asarray(r.feasible)),
        "meets_slo": bool(np.asarray(r.meets_slo)),
        "slo": {"e2e_ms": 1e3 * f(p.slo.e2e_s), "ttft_ms": 1e3 * f(p.slo.ttft_s)},
        "order": [p.stages[i].name for i in topo_order(p)],
        "stages": stages,
    }
