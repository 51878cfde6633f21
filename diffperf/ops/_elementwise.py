"""Memory-bound elementwise kernels (norms, activations, residual adds, embedding lookup)."""

import jax.numpy as jnp

from ..hardware import Hardware
from ._cost import OpCost, roofline_cost


# FLOP per element of an RMSNorm (square, sum, rsqrt-scale, weight multiply) — small enough
# that these kernels are always memory bound; the count only feeds the roofline's compute leg.
_FLOP_PER_ELEM = 4.0


def elementwise_cost(hw: Hardware, elems, bytes_per_elem_moved, tau: float = 0.0) -> OpCost:
    """A fused elementwise kernel over ``elems`` elements moving ``bytes_per_elem_moved`` each.

    ``t = bytes / (bw · η_m) + launch`` with the GEMM family's memory efficiency and launch
    overhead (same DRAM streaming behaviour as a weight-streaming GEMM).
    """
    e = hw.accel.eff.gemm
    elems = jnp.asarray(elems, dtype=float)
    return roofline_cost(
        _FLOP_PER_ELEM * elems,
        elems * bytes_per_elem_moved,
        hw.accel.peak_flop_per_s("fp32"),
        hw.accel.hbm.bw_bytes_per_s,
        1.0,
        e.mem_eff,
        e.launch_s,
        tau,
    )


def embedding_cost(hw: Hardware, tokens, hidden, bytes_per_elem=2.0, tau: float = 0.0) -> OpCost:
    """Embedding lookup: gather ``tokens`` rows of ``hidden`` elements and write them."""
    return elementwise_cost(
        hw, jnp.asarray(tokens, dtype=float) * hidden, 2.0 * bytes_per_elem, tau
    )
