"""Serving metrics returned by every scheme, and the reason a design is infeasible."""

import equinox as eqx
import numpy as np

from .._numerics import as_float_array
from .._types import FloatScalarLike


class Metrics(eqx.Module):
    """What a serving scheme delivers for a workload (SI units; all float leaves).

    Latencies: ``ttft_s``/``tpot_s`` (means) and ``ttft_pct_s``/``tpot_pct_s`` (at the SLO's
    statistic), ``request_latency_s`` (mean). Throughputs: output tokens/s of the whole system,
    per device and per user (``1/tpot``); ``input_throughput_tok_s`` (prompt tokens/s).
    ``devices``: devices used. ``utilisation``: the busiest pool's utilisation (≥ 1 means the
    load exceeds its capacity). ``memory_margin_frac``: the tightest pool's
    ``(capacity - use)/capacity``. ``decode_batch``: running sequences per decode instance.
    Feasibility flags are 1.0/0.0 floats: ``memory_ok``, ``slo_ttft_ok``, ``slo_tpot_ok``,
    ``rate_ok``; ``feasible`` is their product. ``penalty`` is the soft (differentiable) sum of
    the SLO, memory and rate violations used by search.
    ``breakdown_*``: time per component of one decode step (seconds), for reports.
    """

    ttft_s: FloatScalarLike = eqx.field(converter=as_float_array)
    ttft_pct_s: FloatScalarLike = eqx.field(converter=as_float_array)
    tpot_s: FloatScalarLike = eqx.field(converter=as_float_array)
    tpot_pct_s: FloatScalarLike = eqx.field(converter=as_float_array)
    request_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
    throughput_tok_s: FloatScalarLike = eqx.field(converter=as_float_array)
    throughput_tok_s_per_device: FloatScalarLike = eqx.field(converter=as_float_array)
    throughput_tok_s_per_user: FloatScalarLike = eqx.field(converter=as_float_array)
    input_throughput_tok_s: FloatScalarLike = eqx.field(converter=as_float_array)
    devices: FloatScalarLike = eqx.field(converter=as_float_array)
    utilisation: FloatScalarLike = eqx.field(converter=as_float_array)
    memory_margin_frac: FloatScalarLike = eqx.field(converter=as_float_array)
    decode_batch: FloatScalarLike = eqx.field(converter=as_float_array)
    memory_ok: FloatScalarLike = eqx.field(converter=as_float_array)
    slo_ttft_ok: FloatScalarLike = eqx.field(converter=as_float_array)
    slo_tpot_ok: FloatScalarLike = eqx.field(converter=as_float_array)
    rate_ok: FloatScalarLike = eqx.field(converter=as_float_array)
    feasible: FloatScalarLike = eqx.field(converter=as_float_array)
    penalty: FloatScalarLike = eqx.field(converter=as_float_array)
    breakdown_attention_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    breakdown_ffn_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    breakdown_comm_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    breakdown_other_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)


METRIC_KEYS = (
    "ttft_s",
    "ttft_pct_s",
    "tpot_s",
    "tpot_pct_s",
    "request_latency_s",
    "throughput_tok_s",
    "throughput_tok_s_per_device",
    "throughput_tok_s_per_user",
    "input_throughput_tok_s",
    "devices",
    "utilisation",
    "memory_margin_frac",
    "decode_batch",
)


def infeasibility_reason(m: Metrics, i=None) -> str:
    """Human-readable reason a design is infeasible ("" if feasible). ``i`` indexes a batch."""

    def at(x):
        a = np.asarray(x)
        return float(a if i is None else a[i])

    parts = []
    if at(m.memory_ok) < 0.5:
        parts.append(f"memory (margin {100 * at(m.memory_margin_frac):.0f}% of capacity)")
    if at(m.rate_ok) < 0.5:
        parts.append(f"rate (utilisation {at(m.utilisation):.2f} >= 1)")
    if at(m.slo_ttft_ok) < 0.5:
        parts.append(f"TTFT SLO ({at(m.ttft_pct_s):.3g} s)")
    if at(m.slo_tpot_ok) < 0.5:
        parts.append(f"TPOT SLO ({1e3 * at(m.tpot_pct_s):.3g} ms)")
    return ", ".join(parts)


def metrics_to_dict(m: Metrics, i=None) -> dict:
    """JSON-ready dict of the metric keys plus ``feasible`` and ``reason``."""

    def at(x):
        a = np.asarray(x)
        return float(a if i is None else a[i])

    d = {k: at(getattr(m, k)) for k in METRIC_KEYS}
    d["feasible"] = bool(at(m.feasible) > 0.5)
    d["reason"] = infeasibility_reason(m, i)
    d["breakdown"] = {
        "attention_s": at(m.breakdown_attention_s),
        "ffn_s": at(m.breakdown_ffn_s),
        "comm_s": at(m.breakdown_comm_s),
        "other_s": at(m.breakdown_other_s),
    }
    return d
