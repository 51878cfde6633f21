"""Vector-search cost: flat (exact), IVF-PQ and graph (HNSW) indexes, on any device.

All counts are float leaves (corpus size, dimensions, lists, probes, candidates, ...); the
index kind is static. A batch of ``B`` queries on one device costs a roofline
``t = max(flop / (peak · η_c), bytes / (bw · η_m)) + launch`` (plus a dependent-access chain
for graphs), with the device's fp32 (or ``compute_dtype``) peak and its GEMM efficiencies.

- **flat** (FAISS ``IndexFlat``): every query against every vector. ``flop = 2 B N d``; the
  corpus is streamed once per batch (queries are blocked into one GEMM, FAISS's BLAS path):
  ``bytes = N d e + B d e`` with ``e`` bytes per element.
- **ivf_pq** (FAISS ``IndexIVFPQ``, Jégou et al., "Product quantization for nearest
  neighbor search", TPAMI 2011): coarse quantiser ``2 B L d`` FLOP over ``L`` centroids
  (``L d e`` bytes); per probed list a residual lookup table of ``256`` centroids per
  sub-quantiser (``2 · 256 · d`` FLOP per query and probe, 8-bit codes); the scan reads
  ``N p / L`` codes per query of ``m`` bytes plus an 8-byte id, each code costing ``m``
  table lookups + adds. A lookup-add is charged ``LOOKUP_FLOP_EQUIV`` FLOP of the SIMD peak
  (a gather is far slower than a fused multiply-add; estimate). Lists are read once per batch:
  of ``L`` lists a batch touches ``L (1 - (1 - p/L)^B)`` in expectation.
- **graph** (HNSW, Malkov & Yashunin, TPAMI 2018): a query expands about ``ef`` candidates on
  the bottom layer and evaluates ``R`` neighbours each, plus ``R`` per upper layer
  (``log2 N / log2 R`` layers): ``visits = R (ef + log N / log R)``; each visit computes a
  distance (``2 d`` FLOP) and reads one vector (rounded up to 64-byte lines) and its link list
  (``R`` 4-byte ids, read once per expansion). Expansions are dependent loads, so a batch
  also pays ``ef`` memory latencies (queries of a batch run in parallel on the cores).
- Top-k selection and returning the chunks are negligible next to these and left out.

Index memory: flat ``N d e``; IVF-PQ ``N (m + 8) + L d e + 256 d e``; graph
``N (d e + 2 R · 4)`` (bottom layer holds ``2R`` links, HNSW's ``M0 = 2M``).
"""

import equinox as eqx
import jax.numpy as jnp

from .._numerics import as_float_array, safe_div, safe_log
from .._types import FloatScalarLike
from ..hardware import Hardware
from ..ops import OpCost, roofline_cost


INDEX_KINDS = ("flat", "ivf_pq", "graph")
LOOKUP_FLOP_EQUIV = 8.0  # SIMD-FLOP equivalents of one PQ table lookup + add (estimate)
PQ_CENTROIDS = 256.0  # 8-bit codes
CACHE_LINE_BYTES = 64.0
ID_BYTES = 8.0
LINK_BYTES = 4.0


class IndexError_(ValueError):
    """An index with an unknown kind or an invalid value."""


class VectorIndex(eqx.Module):
    """A vector index and its search parameters.

    **Static:** ``kind`` (``"flat"`` | ``"ivf_pq"`` | ``"graph"``), ``compute_dtype``.
    **Leaves:** ``corpus_vectors`` ``N``, ``dim`` ``d``, ``bytes_per_elem`` ``e``;
    IVF-PQ: ``nlist`` ``L``, ``nprobe`` ``p``, ``pq_bytes`` ``m`` (sub-quantisers, 1 byte
    each); graph: ``degree`` ``R``, ``ef_search``; ``top_k`` (reported only).
    """

    kind: str = eqx.field(static=True)
    corpus_vectors: FloatScalarLike = eqx.field(converter=as_float_array)
    dim: FloatScalarLike = eqx.field(converter=as_float_array)
    bytes_per_elem: FloatScalarLike = eqx.field(converter=as_float_array, default=4.0)
    nlist: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    nprobe: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    pq_bytes: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    degree: FloatScalarLike = eqx.field(converter=as_float_array, default=32.0)
    ef_search: FloatScalarLike = eqx.field(converter=as_float_array, default=64.0)
    top_k: FloatScalarLike = eqx.field(converter=as_float_array, default=10.0)
    compute_dtype: str = eqx.field(static=True, default="fp32")

    def __check_init__(self):
        if self.kind not in INDEX_KINDS:
            raise IndexError_(f"index kind = {self.kind!r} must be one of {INDEX_KINDS}")


def _roofline(hw: Hardware, index: VectorIndex, flop, bytes_, tau) -> OpCost:
    e = hw.accel.eff.gemm
    prec = hw.accel.compute_precision(index.compute_dtype)
    eff_c = getattr(e, f"compute_eff_{prec}")
    return roofline_cost(
        flop,
        bytes_,
        hw.accel.peak_flop_per_s(index.compute_dtype),
        hw.accel.hbm.bw_bytes_per_s,
        eff_c,
        e.mem_eff,
        e.launch_s,
        tau,
    )


def search_work(index: VectorIndex, batch):
    """(FLOP, bytes, dependent accesses) of searching ``batch`` queries (see module doc)."""
    n, d, e, b = index.corpus_vectors, index.dim, index.bytes_per_elem, batch
    q_bytes = b * d * e
    if index.kind == "flat":
        return 2.0 * b * n * d, n * d * e + q_bytes, jnp.asarray(0.0)
    if index.kind == "ivf_pq":
        lists, probes, m = index.nlist, jnp.minimum(index.nprobe, index.nlist), index.pq_bytes
        per_list = safe_div(n, lists)
        coarse_flop = 2.0 * b * lists * d
        lut_flop = 2.0 * PQ_CENTROIDS * d * b * probes
        scanned = b * probes * per_list
        scan_flop = scanned * m * LOOKUP_FLOP_EQUIV
        touched = lists * (1.0 - (1.0 - safe_div(probes, lists)) ** jnp.maximum(b, 1.0))
        bytes_ = (
            lists * d * e + PQ_CENTROIDS * d * e + touched * per_list * (m + ID_BYTES) + q_bytes
        )
        return coarse_flop + lut_flop + scan_flop, bytes_, jnp.asarray(0.0)
    # graph
    r = index.degree
    layers = safe_div(safe_log(n), safe_log(r))
    visits = r * (index.ef_search + layers)
    vec_bytes = jnp.ceil(d * e / CACHE_LINE_BYTES) * CACHE_LINE_BYTES
    per_query = visits * vec_bytes + (index.ef_search + layers) * r * LINK_BYTES
    return 2.0 * d * visits * b, b * per_query + q_bytes, index.ef_search + layers


def vector_search_cost(hw: Hardware, index: VectorIndex, batch, tau: float = 0.0) -> OpCost:
    """Time and work of searching ``batch`` queries on one device of ``hw``.

    **Returns:** an :class:`~diffperf.ops.OpCost` (``time_s`` includes the dependent-access
    chain of graph indexes at the device's memory latency).
    """
    flop, bytes_, chain = search_work(index, jnp.asarray(batch, dtype=float))
    cost = _roofline(hw, index, flop, bytes_, tau)
    extra = chain * hw.accel.hbm.latency_s
    return OpCost(
        cost.time_s + extra, cost.compute_s, cost.memory_s, cost.comm_s, cost.flop, cost.bytes
    )


def index_memory_bytes(index: VectorIndex):
    """Bytes the index occupies on the device that serves it (module docstring)."""
    n, d, e = index.corpus_vectors, index.dim, index.bytes_per_elem
    if index.kind == "flat":
        return n * d * e
    if index.kind == "ivf_pq":
        return n * (index.pq_bytes + ID_BYTES) + index.nlist * d * e + PQ_CENTROIDS * d * e
    return n * (d * e + 2.0 * index.degree * LINK_BYTES)
