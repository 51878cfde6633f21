"""Collective-communication efficiency parameters (first cut; refined by the comm owner)."""

import equinox as eqx

from .._numerics import as_float_array
from .._types import FloatScalarLike


class CommEfficiency(eqx.Module):
    """Achieved fractions and software latencies of collectives.

    **Fields** (all float leaves):
    - ``scaleup_bw_eff``: fraction of per-device scale-up bandwidth reached (bus bandwidth).
    - ``scaleout_bw_eff``: fraction of NIC bandwidth reached.
    - ``base_latency_s``: fixed software cost of one collective call.
    """

    scaleup_bw_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    scaleout_bw_eff: FloatScalarLike = eqx.field(converter=as_float_array)
    base_latency_s: FloatScalarLike = eqx.field(converter=as_float_array)
