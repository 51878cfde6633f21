"""Memory tiers a cached KV prefix can be fetched from, and fetch-vs-recompute arithmetic.

A tier is a place the KV cache of an earlier request's prefix may live: the device's own HBM,
host DRAM behind PCIe, a CXL memory expander, a local NVMe SSD, or a remote store reached over
the NIC. The expected time to fetch the prefixes of a batch of ``B`` requests, each found in
tier ``t`` with probability ``h_t`` (exclusive: a prefix is fetched from the fastest tier that
holds it, so ``sum_t h_t <= 1`` and the rest is a miss), is

    T_fetch(B) = sum_t [ (1 - (1 - h_t)^B) · latency_t + h_t · B · bytes / bw_t ]

The first term pays a tier's access latency once per batch whenever at least one request of
the batch hits it (independent hits); the second moves the hit bytes over the tier's link.
Tiers are read one after the other (a conservative choice: host DRAM and CXL share the PCIe
link of the device anyway). With one request and one tier hit for sure this is
``latency + bytes / bw``, so retrieval beats recomputing the prefix (prefill time
``T_pre``) when ``bw > bytes / (T_pre - latency)``: :func:`breakeven_bandwidth_bytes_per_s`.

Tier figures (all per device, per direction; SI units):

- ``hbm``: the preset's HBM (``hw.accel.hbm``).
- ``host_dram``: the preset's host tier (``hw.accel.host``: PCIe Gen5 x16, 64 GB/s, ~2 us on
  the GPU presets).
- ``cxl``: a CXL 1.1/2.0 Type-3 memory expander on PCIe Gen5 x8: 32 GB/s raw per direction
  (PCIe Gen5 = 32 GT/s per lane x 8 lanes / 8 bits); Sun et al., "Demystifying CXL Memory with
  Genuine CXL-Ready Systems and Devices" (MICRO 2023) measure CXL loads ~140-250 ns slower
  than local DDR5 and single-device bandwidth in the 20-30 GB/s range; seen from a GPU the
  PCIe round trip dominates, so latency = host latency + 0.5 us.
- ``local_ssd``: one PCIe Gen4 x4 enterprise NVMe SSD per device (e.g. Samsung PM9A3:
  6.9 GB/s sequential read, ~90 us 4 KiB random-read latency, datasheet), 7 GB/s, 100 us.
- ``remote``: a disaggregated KV store (remote DRAM/SSD pool) over the device's scale-out NIC
  (Mooncake, Qin et al., FAST 2025, moves KV over RDMA near line rate): the preset's NIC
  bandwidth, 25 us (RDMA round trip + store lookup; estimate).
"""

import equinox as eqx
import jax.numpy as jnp

from .._numerics import as_float_array, safe_div
from .._types import FloatScalarLike
from ..hardware import Hardware


TIER_NAMES = ("hbm", "host_dram", "cxl", "local_ssd", "remote")

# figures of the non-preset tiers (see the module docstring for sources)
CXL_BW_BYTES_PER_S = 32e9
CXL_EXTRA_LATENCY_S = 0.5e-6
SSD_BW_BYTES_PER_S = 7e9
SSD_LATENCY_S = 100e-6
REMOTE_LATENCY_S = 25e-6


class TierError(ValueError):
    """A memory tier with an invalid name or value."""


class KVTier(eqx.Module):
    """One memory tier KV blocks can be read from (per device, per direction).

    **Fields:** ``name`` (static), ``bw_bytes_per_s``, ``latency_s``, ``capacity_bytes``
    (float leaves).
    """

    name: str = eqx.field(static=True)
    bw_bytes_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
    latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    capacity_bytes: FloatScalarLike = eqx.field(converter=as_float_array)


def default_kv_tiers(hw: Hardware) -> tuple[KVTier, ...]:
    """The five standard tiers of a device (sources in the module docstring)."""
    a = hw.accel
    return (
        KVTier("hbm", a.hbm.bw_bytes_per_s, a.hbm.latency_s, a.hbm.capacity_bytes),
        KVTier("host_dram", a.host.bw_bytes_per_s, a.host.latency_s, a.host.capacity_bytes),
        KVTier(
            "cxl",
            jnp.minimum(a.host.bw_bytes_per_s, CXL_BW_BYTES_PER_S),
            a.host.latency_s + CXL_EXTRA_LATENCY_S,
            256e9,
        ),
        KVTier("local_ssd", SSD_BW_BYTES_PER_S, SSD_LATENCY_S, 7.68e12),
        KVTier("remote", hw.fabric.scaleout_bw_bytes_per_s, REMOTE_LATENCY_S, 1e15),
    )


def tier_fetch_s(tier: KVTier, hit_rate, batch, bytes_per_request):
    """Expected time to read the hits of one tier for a batch (see module docstring)."""
    hit_rate = jnp.clip(jnp.asarray(hit_rate, dtype=float), 0.0, 1.0)
    any_hit = 1.0 - (1.0 - hit_rate) ** jnp.maximum(batch, 1.0)
    return any_hit * tier.latency_s + safe_div(
        hit_rate * batch * bytes_per_request, tier.bw_bytes_per_s
    )


def kv_fetch_s(tiers: tuple[KVTier, ...], hit_rates, batch, bytes_per_request):
    """``sum_t tier_fetch_s`` over the tiers; ``hit_rates`` is a sequence aligned with
    ``tiers``."""
    total = jnp.asarray(0.0)
    for i, t in enumerate(tiers):
        total = total + tier_fetch_s(t, hit_rates[i], batch, bytes_per_request)
    return total


def breakeven_bandwidth_bytes_per_s(bytes_per_request, recompute_s, latency_s):
    """Link bandwidth above which fetching ``bytes_per_request`` (one request, certain hit)
    beats recomputing it in ``recompute_s``: ``bytes / (recompute_s - latency_s)``; ``inf``
    when the latency alone exceeds the recompute time."""
    slack = jnp.asarray(recompute_s - latency_s, dtype=float)
    return jnp.where(slack > 0, safe_div(bytes_per_request, slack), jnp.inf)


def tier_by_name(tiers: tuple[KVTier, ...], name: str) -> int:
    for i, t in enumerate(tiers):
        if t.name == name:
            return i
    raise TierError(f"tier = {name!r} is not one of {[t.name for t in tiers]}")
