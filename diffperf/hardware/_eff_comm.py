"""Collective-communication efficiency parameters (see diffperf/ops/_collectives.py).

Defaults per architecture profile live in ``hardware_presets/efficiency/comm.toml`` with the
data and method they were fitted on.
"""

import equinox as eqx

from .._numerics import as_float_array
from .._types import FloatScalarLike


class CommEfficiency(eqx.Module):
    """Achieved fractions, per-step latencies and saturation of collectives.

    **Fields** (all float leaves, SI units):
    - ``base_latency_s``: fixed software cost of one NCCL collective call (launch, sync).
    - ``scaleup_latency_factor``: per algorithm step latency as a multiple of the fabric's
      ``scaleup_latency_s``.
    - ``scaleout_latency_factor``: the same for ``scaleout_latency_s``.
    - ``scaleup_bw_eff``: asymptotic fraction of per-device scale-up bandwidth reached by
      ring-type collectives (bus bandwidth of all-gather / reduce-scatter, large groups).
    - ``scaleout_bw_eff``: the same on the NIC tier.
    - ``small_group_loss``: bandwidth fraction lost in small groups,
      ``eff(g) = eff·(1 - small_group_loss/g)`` (fewer NCCL channels/links busy).
    - ``saturation_bytes``: per-rank shard size at which the transfer time is doubled
      (``eff(s) = eff/(1 + (saturation_bytes/s)^saturation_exponent)``).
    - ``saturation_exponent``: steepness of that saturation (1/2 = optimal-chunk pipeline).
    - ``scaleout_saturation_bytes``: ``saturation_bytes`` of the NIC tier (RDMA transfers
      issued by many QPs/warps at once pipeline differently from NVLink copies).
    - ``allreduce_bw_factor``: ring all-reduce bandwidth relative to all-gather (> 1: NCCL
      overlaps its reduce-scatter and all-gather halves).
    - ``alltoall_bw_factor``: all-to-all bandwidth relative to all-gather.
    - ``alltoall_small_group_loss``: the same as ``small_group_loss`` for all-to-all. 0 on a
      switched fabric (NVSwitch): pairwise sends reach every peer over all of a GPU's links
      at any group size; > 0 on a direct mesh (xGMI, RoCE), where two GPUs share one link.
    - ``nvls_bw_eff``: algorithm-bandwidth fraction of in-switch (NVLink SHARP) all-reduce,
      ``t = S/(bw·nvls_bw_eff)``; 0 = no switch reduction on this fabric.
    - ``nvls_latency_s``: fixed latency of the switch-reduction algorithm.
    - ``custom_latency_s``: fixed latency of TRT-LLM's custom (one-/two-shot) all-reduce.
    - ``custom_bw_eff``: scale-up bandwidth fraction it reaches.
    - ``ht_latency_s``, ``ht_bw_eff``, ``ht_per_copy_s``: DeepEP high-throughput (and
      NVLink two-sided) dispatch/combine: fixed latency, bandwidth fraction, cost per routed
      token copy (permute/unpermute, quantisation, bookkeeping).
    - ``ll_latency_s``, ``ll_bw_eff``, ``ll_per_copy_s``: the same for DeepEP low-latency
      (and NVLink one-sided) kernels; ``ll_combine_latency_s`` the LL combine's fixed latency
      (no layout/quantisation pass, lower than dispatch).
    - ``combine_bw_factor``: HT combine bandwidth relative to HT dispatch (reduction on
      receive).
    - ``ll_combine_bw_factor``: the same for the LL combine, a different kernel (one-sided
      per-expert writes, weighted sum on receive, no NVLink forwarding).
    - ``p2p_ll_threshold_bytes``: per-peer message size up to which NCCL point-to-point
      operations (all-to-all, send/recv) use the low-latency protocol (NCCL's
      ``NCCL_P2P_LL_THRESHOLD``, 16 KiB by default); 0 = never.
    - ``p2p_simple_latency_s``: extra latency of the Simple protocol used above it.
    - ``p2p_channel_bw_bytes_per_s``: aggregate copy rate of NCCL's point-to-point channels
      on one rank (channels x the rate one channel's thread block moves data). An
      all-to-all gives every peer, itself included, the same share of the channels, so the
      whole send buffer ``S`` passes through them: ``t >= S/p2p_channel_bw``, and the
      ``(g-1)/g`` of it bound for NVLink peers gets at most that share of the rate. 0 = no
      such ceiling (the links alone bound the transfer).
    """

    base_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    scaleup_latency_factor: FloatScalarLike = eqx.field(converter=as_float_array)
    scaleout_latency_factor: FloatScalarLike = eqx.field(converter=as_float_array)
    scaleup_bw_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    scaleout_bw_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    small_group_loss: FloatScalarLike = eqx.field(converter=as_float_array)
    saturation_bytes: FloatScalarLike = eqx.field(converter=as_float_array)
    saturation_exponent: FloatScalarLike = eqx.field(converter=as_float_array)
    scaleout_saturation_bytes: FloatScalarLike = eqx.field(converter=as_float_array)
    allreduce_bw_factor: FloatScalarLike = eqx.field(converter=as_float_array)
    alltoall_bw_factor: FloatScalarLike = eqx.field(converter=as_float_array)
    alltoall_small_group_loss: FloatScalarLike = eqx.field(converter=as_float_array)
    nvls_bw_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    nvls_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    custom_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    custom_bw_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    ht_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    ht_bw_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    ht_per_copy_s: FloatScalarLike = eqx.field(converter=as_float_array)
    ll_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    ll_bw_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    ll_per_copy_s: FloatScalarLike = eqx.field(converter=as_float_array)
    ll_combine_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    combine_bw_factor: FloatScalarLike = eqx.field(converter=as_float_array)
    ll_combine_bw_factor: FloatScalarLike = eqx.field(converter=as_float_array)
    p2p_ll_threshold_bytes: FloatScalarLike = eqx.field(converter=as_float_array)
    p2p_simple_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    p2p_channel_bw_bytes_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
