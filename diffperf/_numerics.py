"""Smooth, NaN-free numerical primitives.

Every smooth approximation here takes a static temperature ``tau``; ``tau == 0`` gives the
exact (non-smooth) form, which is what reports use. All functions are pure and have finite
gradients everywhere, including at 0 and at exact ties (tested in tests/test_numerics.py).
"""

import jax
import jax.numpy as jnp
from jax import lax

from ._types import FloatScalar


def as_float_array(x) -> jax.Array:
    """Converter for numeric leaves: always a floating JAX array (never a Python float)."""
    return jnp.asarray(x, dtype=float)


def safe_div(n, d):
    """``n / d`` with 0 where ``d == 0``; the double-where keeps the gradient finite."""
    n = jnp.asarray(n, dtype=float)
    d = jnp.asarray(d, dtype=float)
    ok = d != 0
    return jnp.where(ok, n / jnp.where(ok, d, 1.0), 0.0)


def safe_log(x):
    """``log(x)`` for ``x > 0``, 0 elsewhere, with a finite gradient everywhere."""
    x = jnp.asarray(x, dtype=float)
    ok = x > 0
    return jnp.where(ok, jnp.log(jnp.where(ok, x, 1.0)), 0.0)


def pow_nonneg(base, exponent):
    """``base**exponent`` for ``base >= 0`` with finite gradients in both arguments.

    Computed as ``exp(exponent·log(base))``; at ``base == 0`` it is 0 for a positive
    exponent and 1 for a zero (or negative) one, i.e. ``0**0 = 1``, with a zero gradient.
    """
    base = jnp.asarray(base, dtype=float)
    exponent = jnp.asarray(exponent, dtype=float)
    ok = base > 0
    inside = jnp.exp(exponent * jnp.log(jnp.where(ok, base, 1.0)))
    return jnp.where(ok, inside, jnp.where(exponent > 0, 0.0, 1.0))


def safe_sqrt(x):
    """``sqrt(max(x, 0))`` whose gradient at 0 is 0 rather than inf."""
    x = jnp.asarray(x, dtype=float)
    ok = x > 0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, x, 1.0)), 0.0)


def _pow_ratio(r, p: float):
    """``r**p`` for ``r >= 0`` and a static ``p >= 1``, with a finite gradient at ``r == 0``.

    An integral ``p`` (``tau = 0.05`` gives 20) is a chain of multiplications whose gradient
    ``p r^(p-1)`` is 0 at 0 by itself; any other ``p`` goes through ``pow`` behind a where.
    """
    pi = round(p)
    if pi >= 1 and abs(p - pi) < 1e-9:
        return r**pi
    ok = r > 0
    return jnp.where(ok, jnp.where(ok, r, 1.0) ** p, 0.0)


def smooth_max_pos(x, tau: float = 0.0, axis=-1):
    """Smooth maximum of non-negative quantities along ``axis`` (unit-free temperature).

    ``m * (sum_i (x_i / m)^(1/tau))^tau`` with ``m = stop_gradient(max x)``: a p-norm with
    ``p = 1/tau`` scaled by the exact max, so ``tau`` has no unit. It is never below the exact
    max and at most ``n**tau`` above it (n terms; 2**0.05 = 1.035). ``tau == 0`` is the exact
    max. Gradients are finite when all entries are 0 and at exact ties.
    """
    x = jnp.asarray(x, dtype=float)
    if tau == 0:
        return jnp.max(x, axis=axis)
    m = lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    m = jnp.where(m > 0, m, 1.0)
    powr = _pow_ratio(jnp.maximum(x / m, 0.0), 1.0 / tau)
    s = jnp.sum(powr, axis=axis)
    ok = s > 0
    return jnp.where(ok, jnp.squeeze(m, axis) * jnp.where(ok, s, 1.0) ** tau, 0.0)


def smooth_max2(a, b, tau: float = 0.0):
    """Smooth max of two non-negative arrays (broadcast), see :func:`smooth_max_pos`.

    Written without stacking (no concatenate/reduce), which keeps XLA's fusion of the
    backward pass intact.
    """
    a = jnp.asarray(a, dtype=float)
    b = jnp.asarray(b, dtype=float)
    if tau == 0:
        return jnp.maximum(a, b)
    m = lax.stop_gradient(jnp.maximum(a, b))
    m = jnp.where(m > 0, m, 1.0)
    p = 1.0 / tau
    s = _pow_ratio(jnp.maximum(a / m, 0.0), p) + _pow_ratio(jnp.maximum(b / m, 0.0), p)
    ok = s > 0
    return jnp.where(ok, m * jnp.where(ok, s, 1.0) ** tau, 0.0)


def smooth_min_pos(x, tau: float = 0.0, axis=-1):
    """Smooth minimum of positive quantities: ``1 / smooth_max(1/x)``.

    Never above the exact min, at most a factor ``n**tau`` below it; zero entries give 0.
    """
    x = jnp.asarray(x, dtype=float)
    if tau == 0:
        return jnp.min(x, axis=axis)
    inv = safe_div(1.0, x)
    big = jnp.any(x <= 0, axis=axis)
    return jnp.where(big, 0.0, safe_div(1.0, smooth_max_pos(inv, tau, axis=axis)))


def smooth_min2(a, b, tau: float = 0.0):
    """Smooth min of two positive arrays (broadcast), see :func:`smooth_min_pos`."""
    a = jnp.asarray(a, dtype=float)
    b = jnp.asarray(b, dtype=float)
    if tau == 0:
        return jnp.minimum(a, b)
    zero = (a <= 0) | (b <= 0)
    return jnp.where(zero, 0.0, safe_div(1.0, smooth_max2(safe_div(1.0, a), safe_div(1.0, b), tau)))


def softplus_penalty(used, capacity, sharpness: float = 20.0):
    """Soft constraint ``used <= capacity``: ``softplus(k (used/capacity - 1)) / k``.

    Unit-free; about 0 when comfortably inside, about ``used/capacity - 1`` when violated,
    ``log(2)/k`` exactly at the boundary.
    """
    ratio = safe_div(used, capacity)
    return jax.nn.softplus(sharpness * (ratio - 1.0)) / sharpness


def ste_round(x):
    """Round in the forward pass, identity gradient (straight-through estimator)."""
    x = jnp.asarray(x, dtype=float)
    return x + lax.stop_gradient(jnp.round(x) - x)


def ste_ceil(x):
    """Ceil in the forward pass, identity gradient (straight-through estimator)."""
    x = jnp.asarray(x, dtype=float)
    return x + lax.stop_gradient(jnp.ceil(x) - x)


def ceil_div(a, b):
    """Straight-through ``ceil(a / b)`` for non-negative ``a`` and positive ``b``."""
    return ste_ceil(safe_div(a, b))


def saturating(x, x_half):
    """``x / (x + x_half)``: a smooth 0→1 saturation curve (0 at x=0, 1/2 at x=x_half)."""
    x = jnp.asarray(x, dtype=float)
    return safe_div(x, x + x_half)


def relu_smooth(x, scale):
    """``scale * softplus(x / scale)`` for ``scale > 0``; exact ``max(x, 0)`` for ``scale == 0``."""
    x = jnp.asarray(x, dtype=float)
    if isinstance(scale, (int, float)) and scale == 0:
        return jnp.maximum(x, 0.0)
    return scale * jax.nn.softplus(safe_div(x, scale))


def scalar(x) -> FloatScalar:
    """Convert a leaf to a float array (for use on public outputs)."""
    return jnp.asarray(x, dtype=float)
