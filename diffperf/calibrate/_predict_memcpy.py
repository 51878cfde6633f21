"""Predict measured device-memory copies (``op == "memcpy"``, column ``bytes``).

A copy of ``bytes`` reads and writes them once, so it moves ``2·bytes`` through device memory
at the GEMM family's streaming efficiency (the same law as a GEMM's memory leg):

``t = 2·bytes / (bw · mem_eff · 2b/(2b + B_half)) + launch_s``

with ``mem_eff``, ``mem_half_bytes`` (``B_half``) and ``launch_s`` from ``eff.gemm``. This is
how ``diffperf profile`` rows calibrate the memory side of a device.
"""

import jax
import jax.numpy as jnp
import numpy as np

from .._numerics import safe_div
from ..hardware import Hardware
from ..ops._gemm import gemm_mem_eff


def memcpy_time_s(hw: Hardware, bytes_):
    """Seconds to copy ``bytes_`` bytes within device memory (see the module docstring)."""
    moved = 2.0 * jnp.asarray(bytes_, dtype=float)
    bw = hw.accel.hbm.bw_bytes_per_s
    return safe_div(moved, bw * gemm_mem_eff(hw, moved)) + hw.accel.eff.gemm.launch_s


@jax.jit
def _predict(hw: Hardware, b):
    return jax.vmap(lambda x: memcpy_time_s(hw, x))(b)


def traced_groups(cols: dict[str, np.ndarray]):
    """One group (all rows), ``fn(hw)`` the traceable latencies (s)."""
    idx = np.arange(len(cols["op"]))
    b = np.asarray(cols["bytes"], dtype=float)

    def fn(hw, b=b):
        return jax.vmap(lambda x: memcpy_time_s(hw, x))(jnp.asarray(b, dtype=float))

    return [(idx, fn)]


def predict_rows(hw: Hardware, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted latency (s) of memcpy rows of one device."""
    return np.asarray(_predict(hw, jnp.asarray(np.asarray(cols["bytes"], dtype=float))))
