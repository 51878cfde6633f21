import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from diffperf._numerics import (
    ceil_div,
    pow_nonneg,
    relu_smooth,
    safe_div,
    safe_log,
    safe_sqrt,
    smooth_max2,
    smooth_max_pos,
    smooth_min2,
    softplus_penalty,
    ste_ceil,
    ste_round,
)


def test_smooth_max_exact_at_tau0():
    x = jnp.array([1e-3, 2e-3, 0.5e-3])
    assert smooth_max_pos(x, 0.0) == 2e-3


def test_smooth_max_bias_is_unitless_and_bounded():
    # max(1 ms, 2 ms) with tau=0.05: 2 ms * (1 + 0.5**20)**0.05 = 2 ms * (1 + 4.8e-8): the
    # result must not depend on the unit (seconds vs ms) and stay within n**tau of the max.
    for scale in (1e-3, 1.0, 1e3):
        y = smooth_max2(1.0 * scale, 2.0 * scale, 0.05)
        assert 2.0 * scale <= float(y) <= 2.0 * scale * 2**0.05
    # exact tie: both equal 1 -> 1 * 2**tau
    np.testing.assert_allclose(smooth_max2(1.0, 1.0, 0.05), 2**0.05, rtol=1e-12)


def test_smooth_max_tau_limit():
    vals = [float(smooth_max2(1.0, 1.5, t)) for t in (0.2, 0.1, 0.05, 0.01)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    np.testing.assert_allclose(vals[-1], 1.5, rtol=1e-6)


@pytest.mark.parametrize("tau", [0.0, 0.05])
def test_smooth_max_grads_finite_at_zero_and_ties(tau):
    g = jax.grad(lambda a: smooth_max2(a, a, tau))(1.0)
    assert np.isfinite(g)
    g0 = jax.grad(lambda a: smooth_max2(a, 0.0 * a, tau))(0.0)
    assert np.isfinite(g0)
    g00 = jax.grad(lambda a: smooth_max_pos(jnp.stack([a, a]), tau))(0.0)
    assert np.isfinite(g00)


def test_smooth_max_grad_matches_fd():
    check_grads(lambda a, b: smooth_max2(a, b, 0.1), (0.7, 1.3), order=1, modes=["rev"])


@pytest.mark.parametrize("tau", [0.05, 0.03])
def test_smooth_max_integral_and_fractional_exponents(tau):
    # 1/0.05 = 20 runs as a multiplication chain, 1/0.03 = 33.3 through pow: both are
    # m * ((a/m)^p + (b/m)^p)^tau with m = max(a, b) = 2: 2 * (1 + 0.6^p)^tau
    p = 1.0 / tau
    want = 2.0 * (1.0 + 0.6**p) ** tau
    np.testing.assert_allclose(float(smooth_max2(1.2, 2.0, tau)), want, rtol=1e-12)
    np.testing.assert_allclose(float(smooth_max_pos(jnp.array([1.2, 2.0]), tau)), want, rtol=1e-12)
    # d/da = (a/m)^(p-1) * (1 + 0.6^p)^(tau-1) (m is held: stop_gradient)
    g = jax.grad(lambda a: smooth_max2(a, 2.0, tau))(1.2)
    np.testing.assert_allclose(float(g), 0.6 ** (p - 1) * (1 + 0.6**p) ** (tau - 1), rtol=1e-9)
    assert np.isfinite(float(jax.grad(lambda a: smooth_max2(a, 0.0 * a, tau))(0.0)))


def test_smooth_min():
    assert smooth_min2(2.0, 3.0, 0.0) == 2.0
    y = float(smooth_min2(2.0, 3.0, 0.05))
    assert 2.0 / 2**0.05 <= y <= 2.0
    assert float(smooth_min2(0.0, 3.0, 0.05)) == 0.0
    assert np.isfinite(jax.grad(lambda a: smooth_min2(a, 3.0, 0.05))(0.0))


def test_safe_ops_zero():
    assert safe_div(1.0, 0.0) == 0.0
    assert safe_div(3.0, 4.0) == 0.75
    # at d = 0 both partial derivatives are exactly 0 (the outer where passes none back)
    assert jax.grad(lambda d: safe_div(1.0, d))(0.0) == 0.0
    assert jax.grad(lambda n: safe_div(n, 0.0))(1.0) == 0.0
    assert np.isfinite(jax.grad(safe_log)(0.0))
    assert np.isfinite(jax.grad(safe_sqrt)(0.0))
    assert safe_sqrt(4.0) == 2.0


def test_pow_nonneg_values_and_grads_at_zero():
    # ordinary powers: 0.25**0.5 = 0.5, 2**3 = 8
    np.testing.assert_allclose(pow_nonneg(0.25, 0.5), 0.5, rtol=1e-12)
    np.testing.assert_allclose(pow_nonneg(2.0, 3.0), 8.0, rtol=1e-12)
    # base 0: 0 for a positive exponent, 0**0 = 1
    assert float(pow_nonneg(0.0, 2.0)) == 0.0
    assert float(pow_nonneg(0.0, 0.0)) == 1.0
    for b, e in ((0.0, 2.0), (0.0, 0.0), (0.5, 0.0)):
        gb, ge = jax.grad(pow_nonneg, argnums=(0, 1))(b, e)
        assert np.isfinite(gb) and np.isfinite(ge)
    # d/de b**e = b**e·ln b at b = 0.5, e = 2: 0.25·ln 0.5
    np.testing.assert_allclose(jax.grad(pow_nonneg, 1)(0.5, 2.0), 0.25 * np.log(0.5), rtol=1e-9)


def test_penalty():
    # at the boundary: softplus(0)/k = log(2)/k
    np.testing.assert_allclose(softplus_penalty(1.0, 1.0, 20.0), np.log(2) / 20.0)
    assert float(softplus_penalty(0.5, 1.0)) < 1e-4
    np.testing.assert_allclose(softplus_penalty(2.0, 1.0, 20.0), 1.0, rtol=1e-6)
    assert np.isfinite(jax.grad(lambda c: softplus_penalty(1.0, c))(0.0))


def test_straight_through():
    assert ste_round(2.4) == 2.0 and ste_ceil(2.1) == 3.0
    assert jax.grad(ste_round)(2.4) == 1.0 and jax.grad(ste_ceil)(2.1) == 1.0
    assert ceil_div(130.0, 64.0) == 3.0
    assert relu_smooth(-1.0, 0) == 0.0
    assert float(relu_smooth(5.0, 0.01)) == pytest.approx(5.0)
