"""Predict measured GEMM rows (``op == "gemm"``): one jitted, vmapped call per dtype."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..hardware import Hardware
from ..ops._gemm import gemm_cost


@functools.partial(jax.jit, static_argnums=(0,))
def _predict(dtype: str, hw: Hardware, m, n, k):
    return jax.vmap(lambda a, b, c: gemm_cost(hw, a, b, c, dtype).time_s)(m, n, k)


def traced_groups(cols: dict[str, np.ndarray]):
    """``[(row_index, fn)]`` per dtype, ``fn(hw)`` the traceable latencies (s) of those rows."""
    dtypes = np.asarray(cols["dtype"]).astype(str)
    out = []
    for dt in np.unique(dtypes):
        idx = np.flatnonzero(dtypes == dt)
        mnk = [np.asarray(cols[c], dtype=float)[idx] for c in ("m", "n", "k")]

        def fn(hw, dt=str(dt), mnk=mnk):
            m, n, k = (jnp.asarray(a, dtype=float) for a in mnk)
            return jax.vmap(lambda a, b, c: gemm_cost(hw, a, b, c, dt).time_s)(m, n, k)

        out.append((idx, fn))
    return out


def predict_rows(hw: Hardware, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted latency (s) of GEMM rows of one device; ``cols`` from ``read_kernel_csv``."""
    dtypes = np.asarray(cols["dtype"]).astype(str)
    out = np.full(len(dtypes), np.nan)
    for dt in np.unique(dtypes):
        sel = dtypes == dt
        args = [jnp.asarray(np.asarray(cols[c], dtype=float)[sel]) for c in ("m", "n", "k")]
        out[sel] = np.asarray(_predict(str(dt), hw, *args))
    return out
