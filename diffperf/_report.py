"""Turn result pytrees into plain Python for JSON and tables (edge of the library)."""

import math

import equinox as eqx
import numpy as np


def to_float(x) -> float:
    v = float(np.asarray(x))
    return v if math.isfinite(v) else float("nan")


def module_to_dict(m: eqx.Module) -> dict:
    """Recursively convert an eqx.Module of scalar leaves to a dict of floats."""
    out = {}
    for name in m.__dataclass_fields__:
        v = getattr(m, name)
        if isinstance(v, eqx.Module):
            out[name] = module_to_dict(v)
        elif isinstance(v, (str, bool, frozenset)):
            continue
        else:
            out[name] = to_float(v)
    return out


def fmt_time(s: float) -> str:
    if s >= 1.0:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.2f} us"


def fmt_bytes(b: float) -> str:
    sign = "-" if b < 0 else ""
    b = abs(b)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{sign}{b / scale:.2f} {unit}"
    return f"{sign}{b:.0f} B"


def table(rows: list[list[str]], header: list[str] | None = None) -> str:
    allrows = ([header] if header else []) + rows
    widths = [max(len(str(r[i])) for r in allrows) for i in range(len(allrows[0]))]
    lines = []
    for j, r in enumerate(allrows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if header and j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
