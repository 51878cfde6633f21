"""Accelerator, memory tiers, fabric and the Hardware pytree every cost function takes."""

import equinox as eqx
import jax.numpy as jnp

from .._dtypes import get_format
from .._numerics import as_float_array
from .._types import FloatScalar, FloatScalarLike
from ._efficiency import Efficiency


class MemoryTier(eqx.Module):
    """One level of memory seen by a device (HBM, host DRAM through its link, ...).

    **Fields:** ``capacity_bytes``, ``bw_bytes_per_s`` (per device), ``latency_s``; ``name``
    is static.
    """

    name: str = eqx.field(static=True)
    capacity_bytes: FloatScalarLike = eqx.field(converter=as_float_array)
    bw_bytes_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
    latency_s: FloatScalarLike = eqx.field(converter=as_float_array)


class Accelerator(eqx.Module):
    """One device: dense peak per precision, memory tiers, power, price and efficiencies.

    Peaks are dense (no 2:4 sparsity) tensor-core FLOP/s. A peak of 0 means the precision has
    no native support; GEMMs in it then run on the next wider precision that does.
    """

    name: str = eqx.field(static=True)
    kind: str = eqx.field(static=True)  # "gpu" | "tpu" | "asic" | "cpu"
    peak_bf16_flop_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
    peak_fp8_flop_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
    peak_fp4_flop_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
    peak_int8_flop_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
    peak_fp32_flop_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
    hbm: MemoryTier
    host: MemoryTier
    usable_memory_fraction: FloatScalarLike = eqx.field(converter=as_float_array)
    power_w: FloatScalarLike = eqx.field(converter=as_float_array)
    price_usd_per_hour: FloatScalarLike = eqx.field(converter=as_float_array)
    eff: Efficiency
    # Which precisions have native support, decided when the preset is loaded (static so a
    # traced peak never decides a code path).
    native: frozenset = eqx.field(static=True, default=frozenset({"bf16", "fp8", "fp32"}))

    def compute_precision(self, dtype: str) -> str:
        """The tensor-core precision a GEMM in ``dtype`` actually runs on (static)."""
        want = get_format(dtype).compute
        for cand in {
            "fp4": ("fp4", "fp8", "bf16"),
            "fp8": ("fp8", "bf16"),
            "int8": ("int8", "fp8", "bf16"),
            "bf16": ("bf16", "fp32"),
            "fp32": ("fp32", "bf16"),
        }[want]:
            if cand in self.native:
                return cand
        return "bf16"

    def peak_flop_per_s(self, dtype: str) -> FloatScalar:
        """Dense peak FLOP/s for GEMMs stored/computed in format ``dtype``."""
        prec = self.compute_precision(dtype)
        return jnp.asarray(getattr(self, f"peak_{prec}_flop_per_s"), dtype=float)


class Fabric(eqx.Module):
    """Two-tier interconnect: a scale-up domain (NVLink/xGMI/ICI) and scale-out NICs.

    Bandwidths are per device, per direction. ``scaleup_domain_size`` is a float leaf so it can
    be swept and relaxed; plans that need integers round it at the edges.
    """

    scaleup_domain_size: FloatScalarLike = eqx.field(converter=as_float_array)
    scaleup_bw_bytes_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
    scaleup_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    scaleout_bw_bytes_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
    scaleout_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    oversubscription: FloatScalarLike = eqx.field(converter=as_float_array)


class Hardware(eqx.Module):
    """A platform: one accelerator type connected by one fabric. First argument everywhere."""

    accel: Accelerator
    fabric: Fabric

    @property
    def name(self) -> str:
        return self.accel.name
