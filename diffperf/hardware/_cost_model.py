"""A parametric price and power model of an accelerator, fitted to the shipped presets.

Hardware search ("the best device for this workload at this budget") needs a price and a
power for devices that do not exist. Both are modelled as a base plus a linear cost per unit of
each capability the search can change:

``y = base + c_flop * F + c_bw * B + c_cap * C + c_up * U + c_dom * log2(D) + c_nic * N``

with ``F`` the dense BF16 peak (FLOP/s), ``B`` the HBM bandwidth (bytes/s), ``C`` the HBM
capacity (bytes), ``U`` the scale-up bandwidth per device (bytes/s), ``D`` the scale-up domain
size (devices; a bigger switched domain costs more per device, roughly per switch tier, hence
the log) and ``N`` the NIC bandwidth (bytes/s). ``y`` is the price per device-hour (USD) or the
board power (W).

Derivation of the default coefficients (:func:`default_cost_model`): each is the
non-negative least-squares fit of the model (features scaled to O(1) units: PFLOP/s, TB/s,
100 GB, TB/s, log2 devices, 100 GB/s), with a weak ridge (weight 0.1 per preset) toward an
equal-share prior (each capability paying 1/6 of the median preset's value at the median
feature value), to preset data:

- power: the datasheet TDP of every accelerator preset in ``hardware_presets/devices`` (GPUs,
  TPUs, Gaudi; the CPU preset is excluded);
- price: the on-demand price per device-hour of one vendor's SKU ladder (A100, H100, H800,
  H200, B200, GB200: :data:`PRICE_LADDER_PRESETS`). These differ in known capabilities while
  the vendor premium stays constant; across vendors the rental price reflects market position
  more than capability (MI300X has more FLOP/s, HBM and bandwidth than H100 and rents for
  less), and a fit over all vendors prices FLOP/s and HBM capacity at zero, which would make
  "maximise FLOP/s" free.

The non-negativity keeps a capability from lowering the price; the prior keeps one the data
cannot separate from another (6 prices, 7 unknowns) from becoming free. The fit is rerun
from the preset files (no pasted numbers), so editing a preset changes the model;
``tests/test_optimize_cost.py`` checks the residuals and the signs.

Prices are market prices, not costs: the fit is a smooth interpolation of the 2025-26
rental market, good to a few tens of percent (the residuals are reported by
:func:`cost_model_report`); outside the box the presets span it is a linear extrapolation
(a 10 PFLOP/s device is priced by the slope of A100 -> B200), to be read as such.
"""

import functools

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._numerics import as_float_array, safe_log
from .._types import FloatScalarLike
from ._accelerator import Hardware


# Feature order and the O(1) scale of each feature in SI units.
COST_FEATURES = (
    ("flop_per_s", 1e15),  # PFLOP/s (dense BF16)
    ("hbm_bw_bytes_per_s", 1e12),  # TB/s
    ("hbm_capacity_bytes", 1e11),  # 100 GB
    ("scaleup_bw_bytes_per_s", 1e12),  # TB/s
    ("log2_domain_size", 1.0),  # log2 devices per scale-up domain
    ("nic_bw_bytes_per_s", 1e11),  # 100 GB/s
)


class LinearCost(eqx.Module):
    """``base + sum_i coef_i * feature_i`` in the unit of the modelled quantity.

    ``coef`` is one float leaf per feature of :data:`COST_FEATURES`, in (unit of the quantity)
    per (SI unit of the feature), so it can be differentiated or swept.
    """

    base: FloatScalarLike = eqx.field(converter=as_float_array)
    coef: FloatScalarLike = eqx.field(converter=as_float_array)  # shape (6,)

    def __call__(self, hw: Hardware):
        x = hardware_features(hw)
        return self.base + jnp.sum(self.coef * x)


class CostModel(eqx.Module):
    """Price per device-hour (USD) and board power (W) as functions of the hardware."""

    price: LinearCost
    power: LinearCost

    def price_usd_per_hour(self, hw: Hardware):
        return self.price(hw)

    def power_w(self, hw: Hardware):
        return self.power(hw)


def hardware_features(hw: Hardware):
    """The features of :data:`COST_FEATURES` (SI units) as a length-6 float array."""
    a, f = hw.accel, hw.fabric
    return jnp.stack(
        [
            jnp.asarray(a.peak_bf16_flop_per_s, dtype=float),
            jnp.asarray(a.hbm.bw_bytes_per_s, dtype=float),
            jnp.asarray(a.hbm.capacity_bytes, dtype=float),
            jnp.asarray(f.scaleup_bw_bytes_per_s, dtype=float),
            safe_log(f.scaleup_domain_size) / np.log(2.0),
            jnp.asarray(f.scaleout_bw_bytes_per_s, dtype=float),
        ]
    )


def nnls(a: np.ndarray, b: np.ndarray, sweeps: int = 20000, tol: float = 1e-13) -> np.ndarray:
    """Non-negative least squares ``min ||a x - b||^2, x >= 0`` by cyclic coordinate descent.

    Exact coordinate minimisation of a convex quadratic on the non-negative orthant converges
    to the optimum (for the small, well-scaled systems used here, in a few hundred sweeps).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    n = a.shape[1]
    x = np.zeros(n)
    r = b.copy()
    norms = (a**2).sum(axis=0)
    for _ in range(sweeps):
        change = 0.0
        for j in range(n):
            if norms[j] == 0:
                continue
            new = max(0.0, x[j] + a[:, j] @ r / norms[j])
            d = new - x[j]
            if d:
                r -= d * a[:, j]
                x[j] = new
                change = max(change, abs(d))
        if change < tol:
            break
    return x


def _design_matrix(hws) -> np.ndarray:
    rows = []
    for h in hws:
        x = np.asarray(hardware_features(h), dtype=float)
        rows.append([1.0] + [x[i] / s for i, (_, s) in enumerate(COST_FEATURES)])
    return np.array(rows)


def _with_prior(a: np.ndarray, y: np.ndarray, ridge: float):
    """Augment ``a x = y`` with ``sqrt(ridge * n) (x - x0) = 0`` (the equal-share prior).

    ``x0``: no base, and each feature paying an equal share of the median ``y`` at the median
    feature value, so a capability the data cannot separate from another keeps a positive
    price instead of becoming free.
    """
    n, k = a.shape
    med = np.median(a[:, 1:], axis=0)
    x0 = np.zeros(k)
    x0[1:] = np.where(med > 0, np.median(y) / (k - 1) / np.where(med > 0, med, 1.0), 0.0)
    w = np.sqrt(ridge * n) * np.ones(k)
    w[0] = 0.0  # the base is not shrunk
    return np.vstack([a, np.diag(w)]), np.concatenate([y, w * x0])


def fit_cost_model(hws, ridge: float = 0.1, price_hws=None) -> CostModel:
    """Non-negative least-squares price and power model from a list of :class:`Hardware`.

    ``ridge``: weight of the equal-share prior relative to one preset's squared residual
    (:func:`_with_prior`); 0 gives the plain NNLS fit. ``price_hws``: the presets the price
    is fitted to (default: ``hws``).
    """
    hws = list(hws)
    if len(hws) < 2:
        raise ValueError(f"fit_cost_model needs at least 2 hardware presets, got {len(hws)}")
    price_hws = list(price_hws) if price_hws is not None else hws
    if len(price_hws) < 2:
        raise ValueError(f"fit_cost_model needs at least 2 priced presets, got {len(price_hws)}")
    scales = np.array([s for _, s in COST_FEATURES])
    out = {}
    for name, src, y in (
        ("price", price_hws, [float(h.accel.price_usd_per_hour) for h in price_hws]),
        ("power", hws, [float(h.accel.power_w) for h in hws]),
    ):
        a = _design_matrix(src)
        if any(not (v > 0) for v in y):
            raise ValueError(f"fit_cost_model: every preset needs a positive {name}; got {y}")
        x = nnls(*_with_prior(a, np.array(y), ridge))
        out[name] = LinearCost(base=x[0], coef=x[1:] / scales)
    return CostModel(price=out["price"], power=out["power"])


def _accelerator_presets() -> list:
    from ._presets import list_presets, load_hardware

    return [h for h in map(load_hardware, list_presets()) if h.accel.kind != "cpu"]


PRICE_LADDER_PRESETS = ("a100-sxm", "h100-sxm", "h800", "h200-sxm", "b200-sxm", "gb200")


@functools.lru_cache(maxsize=1)
def default_cost_model() -> CostModel:
    """The cost model fitted to the shipped presets (module docstring)."""
    from ._presets import load_hardware

    return fit_cost_model(
        _accelerator_presets(), price_hws=[load_hardware(n) for n in PRICE_LADDER_PRESETS]
    )


def cost_model_report(cm: CostModel | None = None) -> dict:
    """Coefficients (in the fit's O(1) units) and per-preset fitted vs datasheet values."""
    cm = cm or default_cost_model()
    units = ("PFLOP/s", "TB/s HBM", "100 GB HBM", "TB/s scale-up", "log2 domain", "100 GB/s NIC")
    out: dict = {}
    for name, lc in (("price_usd_per_hour", cm.price), ("power_w", cm.power)):
        coef = np.asarray(lc.coef) * np.array([s for _, s in COST_FEATURES])
        out[name] = {"base": float(lc.base), **{f"per {u}": float(c) for u, c in zip(units, coef)}}
    rows = []
    for h in _accelerator_presets():
        rows.append(
            {
                "preset": h.name,
                "price_usd_per_hour": float(h.accel.price_usd_per_hour),
                "fitted_price_usd_per_hour": float(cm.price_usd_per_hour(h)),
                "power_w": float(h.accel.power_w),
                "fitted_power_w": float(cm.power_w(h)),
            }
        )
    out["presets"] = rows
    return out
