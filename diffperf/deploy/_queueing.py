"""Queueing approximations used by the serving schemes (pure, differentiable, NaN-free).

- Waiting for one of ``c`` servers (M/G/c), mean: Sakasegawa's approximation
  ``Wq ≈ ρ^(√(2(c+1)) − 1) / (c (1 − ρ)) · S · (ca² + cs²)/2`` (Sakasegawa 1977; exact for
  M/M/1 and M/G/1's Pollaczek-Khinchine mean when c = 1). ``c`` may be a relaxed float.
- Waiting-time quantiles: the probability of waiting ``P_w ≈ ρ^(√(2(c+1)) − 1)`` and an
  exponential conditional tail with mean ``Wq / P_w`` (exact for M/M/c):
  ``W_p = Wq/P_w · ln(P_w / (1 − p))`` when ``P_w > 1 − p``, else 0.
- Saturation: utilisation is capped smoothly below ``RHO_MAX`` so times stay finite; a design
  with ``ρ ≥ 1`` is reported infeasible (rate) by the scheme, never as a NaN or negative time.
- Closed loops: Little's law ``X = N / R`` solved as a fixed point by a fixed number of damped
  iterations (differentiable through the unrolled loop).
"""

import jax
import jax.numpy as jnp

from .._numerics import safe_div, safe_log


RHO_MAX = 0.98  # utilisation used for finite waiting times once a queue saturates


def capped_utilisation(rho):
    """``min(ρ, RHO_MAX)`` (exact; gradient flows below the cap)."""
    return jnp.minimum(jnp.maximum(jnp.asarray(rho, dtype=float), 0.0), RHO_MAX)


def prob_wait(rho, servers):
    """Probability that an arrival waits in an M/G/c queue (Sakasegawa)."""
    rho = capped_utilisation(rho)
    expo = jnp.sqrt(2.0 * (jnp.maximum(servers, 1.0) + 1.0)) - 1.0
    ok = rho > 0
    return jnp.where(ok, jnp.where(ok, rho, 1.0) ** expo, 0.0)


def mean_wait_s(rho, service_s, servers=1.0, ca2=1.0, cs2=1.0):
    """Mean queueing delay ``Wq`` of an M/G/c-type queue (seconds).

    **Arguments:** utilisation ``ρ = λ S / c``; mean service time ``S``; servers ``c``;
    squared coefficients of variation of inter-arrival (``ca2``; 1 = Poisson) and service
    (``cs2``) times.
    """
    rho_c = capped_utilisation(rho)
    pw = prob_wait(rho_c, servers)
    return safe_div(pw, jnp.maximum(servers, 1.0) * (1.0 - rho_c)) * service_s * 0.5 * (ca2 + cs2)


def wait_quantile_s(mean_wait, rho, servers, q: float | None):
    """Quantile ``q`` of the waiting time (``None`` = the mean), exponential-tail model."""
    if q is None:
        return mean_wait
    pw = prob_wait(rho, servers)
    cond_mean = safe_div(mean_wait, pw)
    return cond_mean * jnp.maximum(safe_log(safe_div(pw, 1.0 - q)), 0.0)


def exponential_quantile_factor(q: float | None):
    """Quantile of a unit-mean exponential (1 for the mean): ``-ln(1 - q)``."""
    if q is None:
        return 1.0
    return float(-jnp.log1p(-q))


def fixed_point(f, x0, iterations: int = 12, damping: float = 0.5):
    """Solve ``x = f(x)`` by damped iteration ``x ← (1-d) x + d f(x)`` (unrolled, static
    count), for the closed-loop Little's-law equations. Differentiable end to end."""

    def body(_, x):
        return (1.0 - damping) * x + damping * f(x)

    return jax.lax.fori_loop(0, iterations, body, x0)
