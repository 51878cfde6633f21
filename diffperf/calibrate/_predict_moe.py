"""Predict measured MoE-layer rows (``op == "moe"``): one jitted, vmapped call per dtype.

The ``distribution`` column becomes the ``skew`` leaf: ``balanced`` → 0,
``power_law_<a>`` → ``a`` (the power-law exponent).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..hardware import Hardware
from ..ops._moe import busiest_rank_load, moe_layer_cost


_COLS = ("tokens", "hidden", "intermediate", "num_experts", "topk", "tp", "ep")


def skew_of(distribution: str) -> float:
    """``balanced`` → 0.0; ``power_law_1.2`` → 1.2; anything else raises ``ValueError``."""
    d = str(distribution)
    if d in ("", "balanced", "uniform", "nan"):
        return 0.0
    if d.startswith("power_law_"):
        return float(d[len("power_law_") :])
    raise ValueError(f"distribution={d!r}: expected 'balanced' or 'power_law_<exponent>'")


_busiest_rank_load = jax.jit(busiest_rank_load)


def _skew_loads(t, e, k, ep, skew) -> np.ndarray:
    """Busiest-rank power-law load factors of the rows (no hardware parameter: computed once
    per table instead of inside every fitted evaluation); 1 for balanced rows. Rows are
    padded to a power of two so that tables of similar size share one compiled call."""
    n = len(t)
    size = 1 << max(n - 1, 1).bit_length()
    pad = lambda x, v: np.concatenate([np.asarray(x, dtype=float), np.full(size - n, v)])
    alpha = np.where(skew > 0.0, skew, 1.2)
    args = (pad(t, 1.0), pad(k, 1.0), pad(e, 1.0), pad(np.maximum(ep, 1.0), 1.0), pad(alpha, 1.2))
    lam = np.asarray(_busiest_rank_load(*args))[:n]
    return np.where(skew > 0.0, lam, 1.0)


@functools.partial(jax.jit, static_argnums=(0,))
def _predict(dtype: str, hw: Hardware, t, h, i, e, k, tp, ep, skew, skew_load):
    f = lambda *a: moe_layer_cost(hw, *a[:7], dtype, True, a[7], skew_load=a[8]).time_s
    return jax.vmap(f)(t, h, i, e, k, tp, ep, skew, skew_load)


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
        t, _, _, e, k, _, ep, sk = args
        args.append(_skew_loads(t, e, k, ep, sk))

        def fn(hw, dt=str(dt), args=args):
            f = lambda *a: moe_layer_cost(hw, *a[:7], dt, True, a[7], skew_load=a[8]).time_s
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
        args = [np.asarray(cols[c], dtype=float)[sel] for c in _COLS]
        t, _, _, e, k, _, ep = args
        loads = _skew_loads(t, e, k, ep, skew[sel])
        args = [jnp.asarray(a) for a in (*args, skew[sel], loads)]
        out[sel] = np.asarray(_predict(str(dt), hw, *args))
    return out
