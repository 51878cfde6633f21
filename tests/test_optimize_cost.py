"""Parametric price/power model: the NNLS solver, the fit to the presets, signs, residuals."""

import numpy as np
import pytest

from diffperf.hardware import load_hardware
from diffperf.hardware._cost_model import (
    COST_FEATURES,
    PRICE_LADDER_PRESETS,
    cost_model_report,
    default_cost_model,
    fit_cost_model,
    hardware_features,
    nnls,
)


def test_nnls_known_solutions():
    # identity system: the solution is b clipped at 0
    np.testing.assert_allclose(nnls(np.eye(3), np.array([1.0, -2.0, 3.0])), [1, 0, 3], atol=1e-12)
    # overdetermined consistent system with a non-negative solution (1, 2): found exactly
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(nnls(a, a @ np.array([1.0, 2.0])), [1.0, 2.0], atol=1e-10)
    # unconstrained least squares of y = 1 - x on x = 0, 1 is slope -1: NNLS keeps slope 0
    # and fits the mean: intercept 0.5
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(nnls(a, np.array([1.0, 0.0])), [0.5, 0.0], atol=1e-10)


def test_features_in_si_units():
    h = load_hardware("h100-sxm")
    x = np.asarray(hardware_features(h))
    # 989.4 TFLOP/s, 3.35 TB/s, 80 GB, 450 GB/s NVLink, log2(8) = 3, 50 GB/s NIC
    np.testing.assert_allclose(x, [989.4e12, 3.35e12, 80e9, 450e9, 3.0, 50e9], rtol=1e-6)
    assert len(x) == len(COST_FEATURES)


def test_default_fit_signs_and_residuals():
    cm = default_cost_model()
    assert float(cm.price.base) >= 0 and float(cm.power.base) >= 0
    assert np.all(np.asarray(cm.price.coef) >= 0) and np.all(np.asarray(cm.power.coef) >= 0)
    # the equal-share prior keeps FLOP/s, HBM bandwidth and capacity priced (a plain NNLS on
    # every vendor's price prices FLOP/s at 0)
    assert np.all(np.asarray(cm.price.coef)[:3] > 0)
    rep = cost_model_report(cm)
    for r in rep["presets"]:
        if r["preset"] in PRICE_LADDER_PRESETS:  # the fitted ladder: within 35%
            assert abs(r["fitted_price_usd_per_hour"] / r["price_usd_per_hour"] - 1) < 0.35
    # power over every accelerator preset: median error under 15%, none off by 2x
    err = np.array([abs(r["fitted_power_w"] / r["power_w"] - 1) for r in rep["presets"]])
    assert np.median(err) < 0.15 and err.max() < 0.6
    # a B200 costs more and draws more than an H100 in the model, as on the datasheets
    b, h = load_hardware("b200-sxm"), load_hardware("h100-sxm")
    assert float(cm.price_usd_per_hour(b)) > float(cm.price_usd_per_hour(h))
    assert float(cm.power_w(b)) > float(cm.power_w(h))


def test_fit_reproduces_an_exactly_linear_market():
    """Prices built from known non-negative coefficients are recovered by the plain fit."""
    import equinox as eqx

    hws = [load_hardware(n) for n in ("a100-sxm", "h100-sxm", "h200-sxm", "b200-sxm", "h800")]
    hws += [load_hardware(n) for n in ("gb200", "mi300x", "mi355x", "tpu-v5p")]
    true_coef = np.array([0.5, 0.2, 0.3, 1.0, 0.1, 0.4])  # per O(1) unit of each feature
    scales = np.array([s for _, s in COST_FEATURES])

    def price(h):
        return 0.3 + float(np.sum(true_coef * np.asarray(hardware_features(h)) / scales))

    hws = [eqx.tree_at(lambda x: x.accel.price_usd_per_hour, h, price(h)) for h in hws]
    cm = fit_cost_model(hws, ridge=0.0)
    np.testing.assert_allclose(float(cm.price.base), 0.3, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cm.price.coef) * scales, true_coef, atol=1e-6)


def test_fit_rejects_bad_input():
    h = load_hardware("h100-sxm")
    with pytest.raises(ValueError, match="at least 2"):
        fit_cost_model([h])
