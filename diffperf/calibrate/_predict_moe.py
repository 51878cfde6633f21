"""Predict measured MoE-layer rows (``op == "moe"``): one jitted, vmapped call per dtype.

The ``distribution`` column becomes the ``skew`` leaf: ``balanced`` → 0,
``power_law_<a>`` → ``a`` (the power-law exponent).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..hardware import Hardware
from ..ops._moe import moe_layer_cost


_COLS = ("tokens", "hidden", "intermediate", "num_experts", "topk", "tp", "ep")


def skew_of(distribution: str) -> float:
    """``balanced`` → 0.0; ``power_law_1.2`` → 1.2; anything else raises ``ValueError``."""
    d = str(distribution)
    if d in ("", "balanced", "uniform", "nan"):
        return 0.0
    if d.startswith("power_law_"):
        return float(d[len("power_law_") :])
    raise ValueError(f"distribution={d!r}: expected 'balanced' or 'power_law_<exponent>'")


@functools.partial(jax.jit, static_argnums=(0,))
def _predict(dtype: str, hw: Hardware, t, h, i, e, k, tp, ep, skew):
    f = lambda *a: moe_layer_cost(hw, *a[:7], dtype, True, a[7]).time_s
    return jax.vmap(f)(t, h, i, e, k, tp, ep, skew)


def traced_groups(cols: dict[str, np.ndarray]):
    """``[(row_index, fn)]`` per dtype, ``fn(hw)`` the traceable latencies (s) of those rows."""
    dtypes = np.asarray(cols["dtype"]).astype(str)
    n = len(dtypes)
    dist = cols.get("distribution", np.array(["balanced"] * n))
    skew = np.array([skew_of(d) for d in dist], dtype=float)
    out = []
    for dt in np.unique(dtypes):
        idx = np.flatnonzero(dtypes == dt)
        args = [np.asarray(cols[c], dtype=float)[idx] for c in _COLS] + [skew[idx]]

        def fn(hw, dt=str(dt), args=args):
            f = lambda *a: moe_layer_cost(hw, *a[:7], dt, True, a[7]).time_s
            return jax.vmap(f)(*(jnp.asarray(a, dtype=float) for a in args))

        out.append((idx, fn))
    return out


def predict_rows(hw: Hardware, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted latency (s) of MoE rows of one device; ``cols`` from ``read_kernel_csv``."""
    dtypes = np.asarray(cols["dtype"]).astype(str)
    n = len(dtypes)
    dist = cols.get("distribution", np.array(["balanced"] * n))
    skew = np.array([skew_of(d) for d in dist], dtype=float)
    out = np.full(n, np.nan)
    for dt in np.unique(dtypes):
        sel = dtypes == dt
        args = [jnp.asarray(np.asarray(cols[c], dtype=float)[sel]) for c in _COLS]
        out[sel] = np.asarray(_predict(str(dt), hw, *args, jnp.asarray(skew[sel])))
    return out
