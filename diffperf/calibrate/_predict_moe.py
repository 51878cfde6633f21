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


def sample_busiest_rank_load(tokens, top_k, experts, ep, alpha, draws, rng) -> np.ndarray:
    """``draws`` samples of the busiest rank's load over the mean rank's in the skewed-routing
    workload of the measured rows (what :func:`busiest_rank_load` takes the expectation of):
    expert loads drawn from ``p(x) ∝ x^-alpha`` on ``[1, 0.8·T]`` (``[0.01, 2]`` when
    ``T·k ≤ E``) by inverse-CDF sampling, ranks holding contiguous blocks of ``E/ep``
    experts; the rounding to whole rows is left out. ``rng``: a numpy ``Generator``."""
    many = tokens * top_k > experts
    lo, hi = (1.0, 0.8 * tokens) if many else (0.01, 2.0)
    b = 1.0 - alpha
    u = rng.random((draws, int(experts)))
    x = (hi**b * u + lo**b * (1.0 - u)) ** (1.0 / b)  # inverse CDF of p(x) ∝ x^-alpha
    share = x / x.sum(axis=1, keepdims=True)
    ranks = share.reshape(draws, int(ep), -1).sum(axis=2) * ep
    return ranks.max(axis=1)


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


def _row_time(hw: Hardware, dtype: str, *a):
    """Latency of one row: the seven ``_COLS`` values, its skew and its busiest-rank load."""
    return moe_layer_cost(hw, *a[:7], dtype, True, a[7], skew_load=a[8]).time_s


def _dtype_groups(cols: dict[str, np.ndarray]):
    """``[(dtype, row_index, args)]``: per dtype the ``_COLS`` columns of its rows, their skew
    (``distribution`` column) and their busiest-rank loads (:func:`_skew_loads`)."""
    dtypes = np.asarray(cols["dtype"]).astype(str)
    n = len(dtypes)
    dist = cols.get("distribution", np.array(["balanced"] * n))
    skew = np.array([skew_of(d) for d in dist], dtype=float)
    out = []
    for dt in np.unique(dtypes):
        idx = np.flatnonzero(dtypes == dt)
        args = [np.asarray(cols[c], dtype=float)[idx] for c in _COLS] + [skew[idx]]
        t, _, _, e, k, _, ep, sk = args
        out.append((str(dt), idx, [*args, _skew_loads(t, e, k, ep, sk)]))
    return out


@functools.partial(jax.jit, static_argnums=(0,))
def _predict(dtype: str, hw: Hardware, *args):
    return jax.vmap(lambda *a: _row_time(hw, dtype, *a))(*args)


def traced_groups(cols: dict[str, np.ndarray]):
    """``[(row_index, fn)]`` per dtype, ``fn(hw)`` the traceable latencies (s) of those rows."""
    out = []
    for dt, idx, args in _dtype_groups(cols):

        def fn(hw, dt=dt, args=args):
            return jax.vmap(lambda *a: _row_time(hw, dt, *a))(*(jnp.asarray(a) for a in args))

        out.append((idx, fn))
    return out


def predict_rows(hw: Hardware, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted latency (s) of MoE rows of one device; ``cols`` from ``read_kernel_csv``."""
    out = np.full(len(cols["dtype"]), np.nan)
    for dt, idx, args in _dtype_groups(cols):
        out[idx] = np.asarray(_predict(dt, hw, *(jnp.asarray(a) for a in args)))
    return out
