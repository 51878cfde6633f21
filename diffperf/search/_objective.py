"""Search objectives: SLO-penalised output tokens per device, per dollar or per watt.

Three figures of merit of a served design (``m``: its :class:`~diffperf.deploy.Metrics`):

- ``tokens-per-device``: ``m.throughput_tok_s_per_device`` (output tokens/s per device);
- ``tokens-per-dollar``: output tokens per USD of device time,
  ``3600 * tok_s_per_device / (price_usd_per_hour + power_w / 1000 * electricity_usd_per_kwh)``
  (the rental price of a device-hour plus the electricity its board draws in that hour);
- ``tokens-per-watt``: ``tok_s_per_device / power_w`` (output tokens per joule).

Price and power come from the accelerator (its preset's figures, overridable), or, when the
hardware itself is searched, from a :class:`~diffperf.hardware._cost_model.CostModel`
anchored at the base preset (:func:`device_cost`).

The relaxed objective the optimiser ascends is ``log(value) - weight * m.penalty``: the log
makes it unit-free (a 1% gain is worth the same at any scale) and ``m.penalty`` is the scheme's
soft sum of SLO, memory and rate violations (unit-free, ~0 when comfortably feasible). Reports
use the exact value of the rounded design at ``tau = 0`` and its ``feasible`` flag.
"""

import equinox as eqx
import jax.numpy as jnp

from .._numerics import as_float_array, safe_div, safe_log
from .._types import FloatScalarLike


OBJECTIVES = ("tokens-per-device", "tokens-per-dollar", "tokens-per-watt")
OBJECTIVE_UNITS = {
    "tokens-per-device": "tok/s/device",
    "tokens-per-dollar": "tok/USD",
    "tokens-per-watt": "tok/J",
}


class Objective(eqx.Module):
    """What to maximise and the prices it needs.

    - ``kind`` (static): one of :data:`OBJECTIVES`.
    - ``electricity_usd_per_kwh``: energy price (USD per kWh) added to the device-hour price.
    - ``price_usd_per_hour`` / ``power_w``: overrides of the accelerator's price and power;
      a negative value (default) means "use the hardware's".
    - ``penalty_weight``: weight of the soft SLO/memory/rate penalty in the relaxed
      objective at the end of the search (the optimiser ramps it up from 1, see
      :mod:`diffperf.search._optimize`).
    """

    kind: str = eqx.field(static=True, default="tokens-per-device")
    electricity_usd_per_kwh: FloatScalarLike = eqx.field(converter=as_float_array, default=0.10)
    price_usd_per_hour: FloatScalarLike = eqx.field(converter=as_float_array, default=-1.0)
    power_w: FloatScalarLike = eqx.field(converter=as_float_array, default=-1.0)
    penalty_weight: FloatScalarLike = eqx.field(converter=as_float_array, default=30.0)

    def __check_init__(self):
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective = {self.kind!r} must be one of {', '.join(OBJECTIVES)}")

    @property
    def unit(self) -> str:
        return OBJECTIVE_UNITS[self.kind]


def make_objective(
    kind: str = "tokens-per-device",
    electricity_usd_per_kwh: float = 0.10,
    price_usd_per_hour: float | None = None,
    power_w: float | None = None,
    penalty_weight: float = 30.0,
) -> Objective:
    """An :class:`Objective` with checked inputs (ValueError naming the field and value)."""
    kind = str(kind).strip().lower().replace("_", "-")
    if kind not in OBJECTIVES:
        raise ValueError(f"objective = {kind!r} must be one of {', '.join(OBJECTIVES)}")
    for name, v in (
        ("electricity_usd_per_kwh", electricity_usd_per_kwh),
        ("price_usd_per_hour", price_usd_per_hour),
        ("power_w", power_w),
        ("penalty_weight", penalty_weight),
    ):
        if v is None:
            continue
        ok = v >= 0 if name == "electricity_usd_per_kwh" else v > 0
        if not (ok and v < float("inf")):
            raise ValueError(f"{name} = {v!r} must be a finite positive number")
    return Objective(
        kind=kind,
        electricity_usd_per_kwh=electricity_usd_per_kwh,
        price_usd_per_hour=-1.0 if price_usd_per_hour is None else price_usd_per_hour,
        power_w=-1.0 if power_w is None else power_w,
        penalty_weight=penalty_weight,
    )


def device_cost(hw, objective: Objective, cost_model=None, base_hw=None):
    """``(price_usd_per_hour, power_w)`` of one device of ``hw``.

    Fixed hardware: the accelerator's figures unless the objective overrides them. Searched
    hardware (``cost_model`` given): the cost model's figures scaled so the base preset
    ``base_hw`` keeps its own price and power, ``price(hw) = price(base) * cm(hw) / cm(base)``;
    an override then replaces ``price(base)``/``power(base)`` in that ratio.
    """
    price = jnp.asarray(hw.accel.price_usd_per_hour, dtype=float)
    power = jnp.asarray(hw.accel.power_w, dtype=float)
    if cost_model is not None:
        b = base_hw if base_hw is not None else hw
        p0 = jnp.asarray(b.accel.price_usd_per_hour, dtype=float)
        w0 = jnp.asarray(b.accel.power_w, dtype=float)
        p0 = jnp.where(objective.price_usd_per_hour > 0, objective.price_usd_per_hour, p0)
        w0 = jnp.where(objective.power_w > 0, objective.power_w, w0)
        price = p0 * safe_div(cost_model.price_usd_per_hour(hw), cost_model.price_usd_per_hour(b))
        power = w0 * safe_div(cost_model.power_w(hw), cost_model.power_w(b))
        return price, power
    price = jnp.where(objective.price_usd_per_hour > 0, objective.price_usd_per_hour, price)
    power = jnp.where(objective.power_w > 0, objective.power_w, power)
    return price, power


def objective_value(m, hw, objective: Objective, cost_model=None, base_hw=None):
    """The exact figure of merit of metrics ``m`` on ``hw`` (unit: ``objective.unit``)."""
    tok = jnp.asarray(m.throughput_tok_s_per_device, dtype=float)
    if objective.kind == "tokens-per-device":
        return tok
    price, power = device_cost(hw, objective, cost_model, base_hw)
    if objective.kind == "tokens-per-watt":
        return safe_div(tok, power)
    usd_per_hour = price + power / 1000.0 * objective.electricity_usd_per_kwh
    return safe_div(3600.0 * tok, usd_per_hour)


def relaxed_objective(m, hw, objective: Objective, weight, cost_model=None, base_hw=None):
    """``log(value) - weight * m.penalty`` (maximised; finite for zero throughput too)."""
    v = objective_value(m, hw, objective, cost_model, base_hw)
    # log of a tiny floor instead of -inf when a design serves nothing
    return safe_log(jnp.maximum(v, 1e-30)) - weight * jnp.asarray(m.penalty, dtype=float)
