"""Read and write measured-kernel tables (the long-format CSV of shared/data/README.md).

A table is a dict of equal-length numpy column arrays: numeric columns as float64 (NaN where
blank), text columns as ``str`` arrays. Row order is preserved.
"""

import csv
import math
from pathlib import Path

import numpy as np


class TableError(ValueError):
    """A measured table is malformed (missing column, bad number, negative latency)."""


TEXT_COLUMNS = frozenset(
    {
        "device",
        "op",
        "dtype",
        "kv_dtype",
        "gemm_dtype",
        "scope",
        "model",
        "distribution",
        "implementation",
    }
)
REQUIRED = ("device", "op", "latency_s")

# Columns each op needs (beyond device/op/latency_s), for clear errors.
OP_COLUMNS: dict[str, tuple[str, ...]] = {
    "gemm": ("dtype", "m", "n", "k"),
    "attention_prefill": (
        "dtype",
        "kv_dtype",
        "batch",
        "seq_len",
        "num_heads",
        "num_kv_heads",
        "head_dim",
    ),
    "attention_decode": (
        "dtype",
        "kv_dtype",
        "batch",
        "kv_len",
        "num_heads",
        "num_kv_heads",
        "head_dim",
    ),
    "mla_prefill": ("scope", "dtype", "kv_dtype", "num_heads", "batch", "seq_len"),
    "mla_decode": ("scope", "dtype", "kv_dtype", "num_heads", "batch", "kv_len"),
    "moe": (
        "dtype",
        "tokens",
        "hidden",
        "intermediate",
        "num_experts",
        "topk",
        "tp",
        "ep",
        "distribution",
    ),
    "all_reduce": ("dtype", "num_devices", "message_bytes"),
    "all_gather": ("dtype", "num_devices", "message_bytes"),
    "reduce_scatter": ("dtype", "num_devices", "message_bytes"),
    "all_to_all": ("dtype", "num_devices", "message_bytes"),
    "moe_dispatch": ("implementation", "dtype", "ep", "hidden", "topk", "num_experts", "tokens"),
    "moe_combine": ("implementation", "dtype", "ep", "hidden", "topk", "num_experts", "tokens"),
    "moe_combine_low_precision": (
        "implementation",
        "dtype",
        "ep",
        "hidden",
        "topk",
        "num_experts",
        "tokens",
    ),
    "moe_prepare": ("implementation", "ep", "topk", "num_experts", "tokens"),
    # device-memory copy of ``bytes`` bytes (read once, written once); diffperf profile
    "memcpy": ("bytes",),
}


def read_kernel_csv(path: str | Path, require_latency: bool = True) -> dict[str, np.ndarray]:
    """Read one measured-kernel CSV into columns, checking every row.

    Raises :class:`TableError` naming the file, the line and the column for a missing column,
    an unparsable or non-finite number, or a non-positive latency.
    """
    path = Path(path)
    try:
        f = open(path, newline="")
    except OSError as e:
        raise TableError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if not header:
            raise TableError(f"{path}: empty file (no header line)")
        need = REQUIRED if require_latency else REQUIRED[:2]
        for col in need:
            if col not in header:
                raise TableError(f"{path}: missing column {col!r} (header: {', '.join(header)})")
        rows = list(reader)
    if not rows:
        raise TableError(f"{path}: no data rows")
    cols: dict[str, np.ndarray] = {}
    for col in header:
        raw = [r.get(col) for r in rows]
        for i, v in enumerate(raw):
            if v is None:
                raise TableError(f"{path}:{i + 2}: row has fewer fields than the header")
        if col in TEXT_COLUMNS:
            cols[col] = np.array([v.strip() for v in raw], dtype=str)
            continue
        vals = np.empty(len(raw), dtype=np.float64)
        for i, v in enumerate(raw):
            v = v.strip()
            if v == "":
                vals[i] = math.nan
                continue
            try:
                x = float(v)
            except ValueError:
                raise TableError(
                    f"{path}:{i + 2}: column {col!r} = {v!r} is not a number"
                ) from None
            if not math.isfinite(x):
                raise TableError(f"{path}:{i + 2}: column {col!r} = {v!r} is not finite")
            vals[i] = x
        cols[col] = vals
    if "latency_s" in cols:
        lat = cols["latency_s"]
        bad = np.flatnonzero(~(lat > 0)) if require_latency else np.flatnonzero(lat <= 0)
        if bad.size:
            i = int(bad[0])
            shown = "blank" if math.isnan(lat[i]) else repr(float(lat[i]))
            raise TableError(
                f"{path}:{i + 2}: latency_s = {shown} must be a positive number of seconds"
            )
    ops = cols["op"]
    for op in (str(o) for o in np.unique(ops)):
        if op not in OP_COLUMNS:
            i = int(np.flatnonzero(ops == op)[0])
            raise TableError(
                f"{path}:{i + 2}: op = {op!r} is not a known kernel; known: {', '.join(OP_COLUMNS)}"
            )
        sel = np.flatnonzero(ops == op)
        for col in OP_COLUMNS[op]:
            if col not in cols:
                raise TableError(f"{path}: op {op!r} needs column {col!r}, which is missing")
            c = cols[col]
            blank = (c[sel] == "") if c.dtype.kind == "U" else np.isnan(c[sel])
            if blank.any():
                i = int(sel[np.flatnonzero(blank)[0]])
                raise TableError(f"{path}:{i + 2}: op {op!r} needs {col!r}, which is blank")
    return cols


def select_rows(cols: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """The sub-table of rows where ``mask`` is true."""
    return {k: v[mask] for k, v in cols.items()}


def concat_tables(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack tables with possibly different columns (missing cells: NaN or "")."""
    keys: list[str] = []
    for t in tables:
        for k in t:
            if k not in keys:
                keys.append(k)
    out = {}
    for k in keys:
        parts = []
        for t in tables:
            n = len(next(iter(t.values())))
            if k in t:
                parts.append(t[k])
            elif k in TEXT_COLUMNS:
                parts.append(np.full(n, "", dtype=str))
            else:
                parts.append(np.full(n, np.nan))
        if any(p.dtype.kind == "U" for p in parts):
            parts = [p.astype(str) for p in parts]
        out[k] = np.concatenate(parts)
    return out


def write_csv(path: str | Path, cols: dict[str, np.ndarray], extra: dict[str, np.ndarray]):
    """Write ``cols`` plus the ``extra`` columns (same row order) as CSV."""
    keys = list(cols) + [k for k in extra if k not in cols]
    merged = {**cols, **extra}
    n = len(next(iter(cols.values())))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for i in range(n):
            row = []
            for k in keys:
                v = merged[k][i]
                if isinstance(v, (float, np.floating)):
                    row.append("" if math.isnan(v) else f"{float(v):.6g}")
                else:
                    row.append(str(v))
            w.writerow(row)
