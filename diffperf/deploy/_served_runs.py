"""Predict measured end-to-end serving runs (the ``e2e`` CSV format of shared/data/README.md).

One row = one benchmark run: hardware (``system``), model (``model_path``, a Hugging Face repo
id), ``mode`` (``agg`` | ``disagg``), fixed ``isl_tokens``/``osl_tokens``, the engine's max
batch (``batch_size``), the parallel plan (``tp_size``, ``pp_size``, ``attention_dp_size``,
``moe_tp_size``, ``moe_ep_size``; ``prefill_*``/``decode_*`` for P/D runs), quantisation
(``gemm_quant_mode``, ``moe_quant_mode``, ``precision``; blank = the model's released
format) and ``concurrency`` closed-loop clients.

Rows are grouped by static structure (model, hardware, formats, mode); each group is one
jitted, vmapped call (plan degrees, lengths, batch limits and concurrency are float leaves).

Benchmark-harness terms (closed-loop load generators, see :class:`Aggregated`):
``HARNESS_COLD_START_FRAC = 1/10`` — the harness sends ``10 × concurrency`` requests (the
common ``num_prompts = concurrency · 10`` convention), the first ``concurrency`` of them in
one burst; ``HARNESS_CLIENT_QUEUE_REQUESTS = 1`` — measured TTFT includes on average one
inter-completion interval ``1/X`` at low concurrency (TTFT − R/N is independent of OSL there
in served_h100_llama31_8b.csv: e.g. TP8, 8 clients, ISL 1024: 43, 39, 30 ms for OSL 128, 256,
512 while R/N grows 65 → 204 ms), i.e. one request issued but not yet admitted.
"""

import csv
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._numerics import safe_div
from ..hardware import load_hardware
from ..model import load_model
from ..stages import ParallelPlan
from ._aggregated import Aggregated
from ._workload import Workload


HARNESS_COLD_START_FRAC = 0.1
HARNESS_CLIENT_QUEUE_REQUESTS = 1.0
MAX_NUM_TOKENS = 8192.0
PAD_ROWS = 256

TEXT_COLUMNS = frozenset(
    {
        "system",
        "backend",
        "backend_version",
        "model_path",
        "mode",
        "precision",
        "gemm_quant_mode",
        "moe_quant_mode",
        "kv_cache_dtype",
        "kv_quant_mode",
    }
)
REQUIRED = ("system", "model_path", "isl_tokens", "osl_tokens", "concurrency")
AGG_REQUIRED = ("batch_size", "tp_size")
DISAGG_REQUIRED = (
    "prefill_num_workers",
    "prefill_tp_size",
    "prefill_batch_size",
    "decode_num_workers",
    "decode_tp_size",
    "decode_batch_size",
)

# quantisation names of serving tables -> diffperf formats (weights, kv cache)
_QUANT = {
    "": None,
    "none": None,
    "auto": None,
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "fp8": "fp8",
    "fp8_e4m3": "fp8",
    "fp8_per_tensor": "fp8",
    "fp8_block": "fp8_block",
    "fp8_blockwise": "fp8_block",
    "nvfp4": "nvfp4",
    "fp4": "nvfp4",
    "mxfp4": "mxfp4",
    "w4a16_mxfp4": "w4a16_mxfp4",
    # 4-bit weights with fp8 activations (Hopper MoE): weight bytes of a 4-bit format,
    # math no faster than the weight-only path models it (documented approximation)
    "w4afp8": "w4a16_mxfp4",
    "w4a16": "w4a16_mxfp4",
    "int8": "int8",
    "int8_wo": "int8_wo",
    "w8a16": "int8_wo",
}


class ServedRunsError(ValueError):
    """A served-runs table is malformed (names file:line and column)."""


def read_served_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Read an e2e serving table: numeric columns float64 (NaN where blank), text as ``str``.

    Raises :class:`ServedRunsError` naming ``file:line`` and the column for a bad number or
    a missing required column.
    """
    path = Path(path)
    try:
        f = open(path, newline="")
    except OSError as e:
        raise ServedRunsError(f"{path}: cannot read served-runs table: {e.strerror}") from None
    with f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ServedRunsError(f"{path}:1: missing column(s) {missing}; header: {header}")
        rows = list(reader)
    cols: dict[str, np.ndarray] = {}
    for c in header:
        if c in TEXT_COLUMNS:
            cols[c] = np.array([(r[c] or "").strip() for r in rows], dtype=str)
            continue
        vals = np.empty(len(rows))
        for i, r in enumerate(rows):
            cell = (r[c] or "").strip()
            if cell == "":
                vals[i] = np.nan
                continue
            try:
                vals[i] = float(cell)
            except ValueError:
                raise ServedRunsError(
                    f"{path}:{i + 2}: column {c!r} = {cell!r} is not a number"
                ) from None
            if not math.isfinite(vals[i]):
                raise ServedRunsError(f"{path}:{i + 2}: column {c!r} = {cell!r} is not finite")
        cols[c] = vals
    return cols


def _text(cols, name, i) -> str:
    if name not in cols:
        return ""
    return str(cols[name][i]).strip()


def _num(cols, name, i, default=None) -> float:
    v = float(cols[name][i]) if name in cols else float("nan")
    if math.isnan(v):
        if default is None:
            raise ServedRunsError(f"row {i}: column {name!r} is blank")
        return float(default)
    return v


def _fmt(name: str, row: int, column: str) -> str | None:
    key = name.strip().lower()
    if key not in _QUANT:
        raise ServedRunsError(
            f"row {row}: column {column!r} = {name!r} is not a known quantisation; "
            f"known: {sorted(k for k in _QUANT if k)}"
        )
    return _QUANT[key]


def _formats(cols, i, model) -> tuple[str, str, str]:
    """(weight, moe, kv) formats of row ``i``."""
    prec = _fmt(_text(cols, "precision", i), i, "precision")
    gemm = _fmt(_text(cols, "gemm_quant_mode", i), i, "gemm_quant_mode") or prec
    moe = _fmt(_text(cols, "moe_quant_mode", i), i, "moe_quant_mode") or gemm
    wd = gemm or model.default_dtype
    md = moe or model.default_dtype
    kv_raw = _text(cols, "kv_cache_dtype", i) or _text(cols, "kv_quant_mode", i)
    kv = _fmt(kv_raw, i, "kv_cache_dtype") if kv_raw else None
    if kv is None:
        # quantised checkpoints served by TRT-LLM ship an fp8 KV cache; bf16 otherwise
        kv = "fp8" if wd in ("fp8", "fp8_block", "nvfp4", "mxfp4") else "bf16"
    return wd, md, kv


def _plan_degrees(cols, i, prefix, has_moe):
    tp = _num(cols, f"{prefix}tp_size", i)
    pp = _num(cols, f"{prefix}pp_size", i, 1.0)
    dp = _num(cols, f"{prefix}attention_dp_size", i, 1.0)
    if has_moe:
        ep = _num(cols, f"{prefix}moe_ep_size", i, float("nan"))
        mtp = _num(cols, f"{prefix}moe_tp_size", i, float("nan"))
        group = tp * dp
        if math.isnan(ep) and math.isnan(mtp):
            ep, mtp = group, 1.0
        elif math.isnan(ep):
            ep = group / mtp
        elif math.isnan(mtp):
            mtp = group / ep
    else:
        ep = mtp = 1.0
    return [tp, pp, dp, ep, mtp]


def _plan(deg, formats) -> ParallelPlan:
    wd, md, kv = formats
    return ParallelPlan(
        tp=deg[0],
        pp=deg[1],
        dp=deg[2],
        ep=deg[3],
        moe_tp=deg[4],
        weight_dtype=wd,
        moe_dtype=md,
        kv_dtype=kv,
    )


def _workload(isl, osl, conc) -> Workload:
    return Workload(isl_tokens=isl, osl_tokens=osl, concurrency=conc, load_mode="closed")


@eqx.filter_jit
def _agg_batch(hw, model, formats_holder, args):
    def one(a):
        plan = _plan([a[0], a[1], a[2], a[3], a[4]], formats_holder)
        scheme = Aggregated(
            plan=plan,
            instances=1.0,
            max_batch=a[5],
            max_num_tokens=MAX_NUM_TOKENS,
            cold_start_frac=HARNESS_COLD_START_FRAC,
            client_queue_requests=HARNESS_CLIENT_QUEUE_REQUESTS,
        )
        m = scheme.metrics(hw, model, _workload(a[6], a[7], a[8]))
        return m.ttft_s, m.tpot_s

    return jax.vmap(one)(args)


@eqx.filter_jit
def _disagg_batch(hw, model, formats_holder, args):
    from ._disaggregated import Disaggregated

    def one(a):
        pre = _plan([a[0], a[1], a[2], a[3], a[4]], formats_holder)
        dec = _plan([a[5], a[6], a[7], a[8], a[9]], formats_holder)
        scheme = Disaggregated(pre, dec, a[10], a[11], a[12], a[13], max_num_tokens=MAX_NUM_TOKENS)
        m = scheme.metrics(hw, model, _workload(a[14], a[15], a[16]))
        # the load generator's issued-but-not-admitted request (see the module docstring)
        x = m.throughput_tok_s / jnp.maximum(a[15], 1.0)
        extra = HARNESS_CLIENT_QUEUE_REQUESTS * safe_div(1.0, x)
        return m.ttft_s + extra, m.tpot_s

    return jax.vmap(one)(args)


def predict_served_runs(
    cols: dict[str, np.ndarray], hardware_override=None
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (TTFT s, TPOT s) for every row of an e2e serving table.

    **Arguments:** ``cols`` — columns as returned by :func:`read_served_csv`;
    ``hardware_override`` — a :class:`~diffperf.hardware.Hardware` (or preset name) used for
    every row instead of the ``system`` column.

    **Returns:** two float arrays (seconds), one entry per row.
    """
    for c in REQUIRED:
        if c not in cols:
            raise ServedRunsError(f"served-runs table: missing column {c!r}")
    n = len(cols["isl_tokens"])
    ttft = np.full(n, np.nan)
    tpot = np.full(n, np.nan)
    if n == 0:
        return ttft, tpot
    hw_cache: dict[str, object] = {}
    model_cache: dict[str, object] = {}
    groups: dict[tuple, list[int]] = {}
    rows_args: dict[int, list[float]] = {}
    for i in range(n):
        sysname = _text(cols, "system", i)
        mpath = _text(cols, "model_path", i)
        mode = (_text(cols, "mode", i) or "agg").lower()
        if mode not in ("agg", "disagg"):
            raise ServedRunsError(f"row {i}: column 'mode' = {mode!r} must be agg or disagg")
        if mpath not in model_cache:
            try:
                model_cache[mpath] = load_model(mpath)
            except ValueError as e:
                raise ServedRunsError(f"row {i}: column 'model_path': {e}") from None
        model = model_cache[mpath]
        hw_key = "<override>" if hardware_override is not None else sysname
        if hw_key not in hw_cache:
            if hardware_override is None:
                try:
                    hw_cache[hw_key] = load_hardware(sysname)
                except ValueError as e:
                    raise ServedRunsError(f"row {i}: column 'system': {e}") from None
            elif isinstance(hardware_override, str):
                hw_cache[hw_key] = load_hardware(hardware_override)
            else:
                hw_cache[hw_key] = hardware_override
        formats = _formats(cols, i, model)
        isl = _num(cols, "isl_tokens", i)
        osl = _num(cols, "osl_tokens", i)
        conc = _num(cols, "concurrency", i)
        if mode == "agg":
            for c in AGG_REQUIRED:
                if c not in cols:
                    raise ServedRunsError(f"row {i}: agg run needs column {c!r}")
            deg = _plan_degrees(cols, i, "", model.has_moe)
            args = deg + [_num(cols, "batch_size", i), isl, osl, conc]
        else:
            for c in DISAGG_REQUIRED:
                if c not in cols:
                    raise ServedRunsError(f"row {i}: disagg run needs column {c!r}")
            pdeg = _plan_degrees(cols, i, "prefill_", model.has_moe)
            ddeg = _plan_degrees(cols, i, "decode_", model.has_moe)
            args = (
                pdeg
                + ddeg
                + [
                    _num(cols, "prefill_num_workers", i),
                    _num(cols, "decode_num_workers", i),
                    _num(cols, "prefill_batch_size", i),
                    _num(cols, "decode_batch_size", i),
                    isl,
                    osl,
                    conc,
                ]
            )
        key = (mpath, hw_key, formats, mode)
        groups.setdefault(key, []).append(i)
        rows_args[i] = args
    for (mpath, hw_key, formats, mode), idx in groups.items():
        rows = np.array([rows_args[i] for i in idx], dtype=float)
        # pad to a multiple of PAD_ROWS (repeating the last row): tables up to PAD_ROWS rows
        # of one structure share one compile (a padded row costs microseconds)
        size = PAD_ROWS * -(-len(idx) // PAD_ROWS)
        rows = np.concatenate([rows, np.repeat(rows[-1:], size - len(idx), axis=0)])
        fn = _agg_batch if mode == "agg" else _disagg_batch
        a, b = fn(hw_cache[hw_key], model_cache[mpath], formats, jnp.asarray(rows))
        ttft[idx] = np.asarray(a)[: len(idx)]
        tpot[idx] = np.asarray(b)[: len(idx)]
    return ttft, tpot
