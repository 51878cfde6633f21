"""OpCost: what every kernel and collective model returns, and the shared roofline."""

import equinox as eqx
import jax.numpy as jnp

from .._numerics import as_float_array, safe_div, smooth_max2
from .._types import FloatScalarLike


class OpCost(eqx.Module):
    """Time and work of one operation (or a sum of operations) on one device.

    - ``time_s``: predicted wall time.
    - ``compute_s``: the compute leg of the roofline (``flop / (peak * eff)``).
    - ``memory_s``: the memory leg (``bytes / (bw * eff)``).
    - ``comm_s``: time spent in communication (collectives; 0 for kernels).
    - ``flop``, ``bytes``: work done (FLOP) and HBM bytes moved (for reports and checks).

    ``compute_s``/``memory_s`` are the roofline legs, so ``time_s >= max`` of them for one
    kernel; summed costs keep the sums of each leg.
    """

    time_s: FloatScalarLike = eqx.field(converter=as_float_array)
    compute_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    memory_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    comm_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    flop: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    bytes: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)

    def __add__(self, other: "OpCost") -> "OpCost":
        return OpCost(
            self.time_s + other.time_s,
            self.compute_s + other.compute_s,
            self.memory_s + other.memory_s,
            self.comm_s + other.comm_s,
            self.flop + other.flop,
            self.bytes + other.bytes,
        )

    def scale(self, n) -> "OpCost":
        """The cost of running this operation ``n`` times (``n`` may be a traced float)."""
        return OpCost(
            self.time_s * n,
            self.compute_s * n,
            self.memory_s * n,
            self.comm_s * n,
            self.flop * n,
            self.bytes * n,
        )

    @staticmethod
    def zero() -> "OpCost":
        return OpCost(0.0)


def sum_costs(*costs: OpCost) -> OpCost:
    out = OpCost.zero()
    for c in costs:
        out = out + c
    return out


def roofline_cost(
    flop,
    bytes_,
    peak_flop_per_s,
    bw_bytes_per_s,
    compute_eff,
    mem_eff,
    launch_s,
    tau: float = 0.0,
) -> OpCost:
    """``t = smooth_max(flop / (peak·η_c), bytes / (bw·η_m)) + launch``.

    **Arguments:** work in FLOP and bytes, peak FLOP/s and bytes/s, the efficiencies in (0, 1]
    (may be shape-dependent arrays), the fixed launch overhead in seconds and the smooth-max
    temperature (0 = exact max).

    **Returns:** an :class:`OpCost` with both legs.
    """
    compute_s = safe_div(flop, peak_flop_per_s * compute_eff)
    memory_s = safe_div(bytes_, bw_bytes_per_s * mem_eff)
    t = smooth_max2(compute_s, memory_s, tau) + launch_s
    return OpCost(t, compute_s, memory_s, jnp.zeros_like(t), flop, bytes_)
