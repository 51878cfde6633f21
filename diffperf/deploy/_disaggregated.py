"""Prefill/decode (P/D) disaggregation: a prefill pool, a decode pool and the KV transfer.

Steady-state model (all SI units; every number a float leaf, so it is swept and differentiated):

**Prefill pool** (``c_p = prefill_instances`` instances of ``prefill_plan``). A request has
``U = ISL (1 - hit)`` uncached tokens after ``ISL·hit`` cached ones (prefix hits skip compute
but are still attended). An iteration carries ``b_cap = min(prefill_max_batch,
dp·max_num_tokens / U)`` prompts (``b_cap < 1``: a long prompt is chunked over ``1/b_cap``
iterations). ``t(b)`` = ``max(GPU iteration, host overhead)`` of ``b`` prompts; the pool's
capacity is ``μ_p = c_p / S``, ``S = max(t(b_cap)/b_cap, t_kv/dp)`` seconds per request per
instance (the KV senders of each attention replica must also keep up). At load ``ρ_p = X/μ_p``
the batch a request joins grows from one prompt (``b_1 = min(1, b_cap)``) to full,
``b = b_1 + ρ_p (b_cap - b_1)``, and its prefill takes ``t(b)/min(1, b)`` with ``t`` linear
between the two evaluated points ``t(b_1)`` and ``t(b_cap)``. Queueing: M/G/c with ``c_p``
servers of mean service ``S`` (Sakasegawa; ``cs² = isl_cv²``).

**KV transfer** of one request: ``bytes = ISL · kv_elems/token/layer · kv_bytes · layers``
(sliding-window layers at most the window; the prefill plan's ``kv_dtype``), e.g.
Llama-3.1-70B bf16: ``2·8·128·2 B · 80 = 327,680 B`` per token. The ``tp·pp`` devices that
hold the request's KV send in parallel (each its share, one message per layer) to the decode
instance's ``tp·pp`` devices: ``n = min(senders, receivers)`` links, each
``t_layer = p2p(bytes/(layers·n), x)`` with ``x = clip(devices_p + devices_d − domain, 0, 1)``
(0: both pools fit in one scale-up domain, e.g. GB200 NVL72's 72 GPUs, NVLink; 1: NICs).
Assumption: the transfer is pipelined by layer with the prefill (layer ``l``'s KV is sent as
soon as layer ``l`` is done, as Mooncake/Dynamo do), so the request completes at
``max(t_p, t_kv) + min(t_p, t_kv)/layers`` (two-stage flow line of ``layers`` items) and the
exposed transfer time is that minus ``t_p``.
``TTFT = W_q + t_p + exposed KV``; its percentile = the queue's quantile + ``t_p·(1 + z·isl_cv)``
+ exposed KV.

**Decode pool** (``D = decode_instances`` of ``decode_plan``): ``TPOT(B) = max(GPU step,
host)`` of ``B`` running sequences per instance at the mean context ``ISL + OSL/2``. Little's
law on the pool: ``X_d(B) = D·B / ((OSL-1)·TPOT(B))`` requests/s; capacity ``X_d(B_max)``.
Decode iterations are homogeneous, so ``TPOT``'s percentile is its mean (the batch is taken
as steady; fluctuation of the running batch is not modelled).

**Load.** Closed loop (``N`` clients, no think time): the decode batch ``B`` solves
``N = D·B + X_d(B)·TTFT(X_d(B))`` (i.e. ``X·R = N`` with ``R = TTFT + (OSL-1)·TPOT``,
``B = X(OSL-1)TPOT/D``), unless the prefill pool saturates first: ``B`` is the root of
``max(N(B)/N − 1, X_d(B)/(RHO_MAX·μ_p) − 1)`` on ``[0, B_max]`` (both increasing), found by
Illinois regula falsi (fixed iteration count) with gradients by the implicit-function
theorem. Clients the pools cannot hold (decode slots full at ``B_max``, or the prefill pool at
``RHO_MAX``) wait for admission: ``(N − N(B))/X`` is added to TTFT, so ``X·R = N`` always and
a closed loop is never rate-infeasible (as in ``Aggregated``). Open loop at rate ``λ``:
``X_d(B) = λ`` (``B = B_max`` when the pool cannot keep up), carried throughput
``min(λ, μ_p, X_d(B_max))`` (smooth min at ``tau > 0``), waits at the capped utilisation.

**Outputs.** Output throughput ``X·OSL`` tokens/s; utilisation: open loop the bottleneck's
``max(λ/μ_p, λ/X_d(B_max))``; closed loop the prefill pool's ``ρ_p`` (a closed loop cannot
overload the decode pool: surplus clients wait for a slot, as in ``Aggregated``). Memory:
prefill devices hold weights + KV and activations of one ``b_cap`` iteration; decode devices
weights + KV of the running ``B`` sequences at ``ISL + OSL``; the margin is the tighter pool's.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._dtypes import get_format
from .._numerics import as_float_array, safe_div, smooth_max2, smooth_min2
from .._types import FloatScalarLike
from ..hardware import Hardware
from ..model import ModelSpec
from ..ops import p2p_cost
from ..stages import ParallelPlan, decode_batch, iteration, memory_usage, prefill_batch
from ._aggregated import HOST_OVERHEAD_S, HOST_OVERHEAD_S_PER_SEQ, _z
from ._metrics import Metrics
from ._queueing import RHO_MAX, mean_wait_s, wait_quantile_s
from ._scheme import AbstractServingScheme, finish_metrics
from ._workload import Workload


ROOT_ITERATIONS = 24  # Illinois steps of the decode-batch root search (on the interpolant)
TPOT_NODES = 6  # exact decode-step evaluations the interpolant is built from


def host_overhead_s(seqs):
    """Engine host time of one iteration of ``seqs`` sequences (overlapped with the GPU)."""
    return HOST_OVERHEAD_S + HOST_OVERHEAD_S_PER_SEQ * seqs


def kv_transfer_bytes(model: ModelSpec, tokens, kv_dtype: str):
    """KV-cache bytes of one sequence of ``tokens`` tokens, all layers.

    ``tokens · kv_elems_per_token_per_layer · kv_bytes · full_layers`` plus sliding-window
    layers at ``min(tokens, window)``. Llama-3.1-70B in bf16: ``2·8·128·2 B = 4,096 B`` per
    token per layer, ``327,680 B`` per token over 80 layers.
    """
    kvb = get_format(kv_dtype).bytes_per_element
    per = model.kv_elems_per_token_per_layer() * kvb
    win = model.sliding_window_tokens
    capped = jnp.where(win > 0, jnp.minimum(tokens, win), tokens)
    full = model.num_layers - model.num_sliding_layers
    return per * (full * tokens + model.num_sliding_layers * capped)


def layerwise_overlap_s(t_compute, t_transfer, layers, tau: float = 0.0):
    """Completion time of compute pipelined by layer with the transfer of its output.

    A two-stage flow line of ``layers`` equal items: ``max(a, b) + min(a, b)/layers``
    (``a``, ``b`` the whole compute and transfer times; smooth max at ``tau > 0``).
    """
    big = smooth_max2(t_compute, t_transfer, tau)
    small = jnp.maximum(t_compute + t_transfer - big, 0.0)
    return big + safe_div(small, jnp.maximum(layers, 1.0))


def cross_domain(hw: Hardware, devices):
    """Relaxed indicator that ``devices`` do not fit one scale-up domain: ``clip(n − d, 0, 1)``."""
    return jnp.clip(devices - hw.fabric.scaleup_domain_size, 0.0, 1.0)


class PrefillPool(eqx.Module):
    """What the serving solve needs from a prefill pool (all float leaves, seconds/requests).

    Built by :func:`prefill_pool`; ``ttft`` turns a request rate into mean/percentile TTFT.
    """

    instances: FloatScalarLike = eqx.field(converter=as_float_array)
    b1: FloatScalarLike = eqx.field(converter=as_float_array)
    b_cap: FloatScalarLike = eqx.field(converter=as_float_array)
    t1_s: FloatScalarLike = eqx.field(converter=as_float_array)
    t_cap_s: FloatScalarLike = eqx.field(converter=as_float_array)
    kv_s: FloatScalarLike = eqx.field(converter=as_float_array)
    service_s: FloatScalarLike = eqx.field(converter=as_float_array)
    layers: FloatScalarLike = eqx.field(converter=as_float_array)
    cs2: FloatScalarLike = eqx.field(converter=as_float_array)
    isl_cv: FloatScalarLike = eqx.field(converter=as_float_array)

    @property
    def capacity_per_s(self):
        """Requests/s the pool can prefill (and ship)."""
        return safe_div(self.instances, self.service_s)

    def ttft(self, rate, q: float | None, tau: float = 0.0):
        """(mean TTFT, TTFT at quantile ``q``, utilisation) at ``rate`` requests/s."""
        rho = rate * safe_div(self.service_s, self.instances)
        rho_c = jnp.clip(rho, 0.0, 1.0)
        b = self.b1 + rho_c * (self.b_cap - self.b1)
        t_it = self.t1_s + (b - self.b1) * safe_div(self.t_cap_s - self.t1_s, self.b_cap - self.b1)
        t_p = safe_div(t_it, jnp.minimum(b, 1.0))
        exposed = layerwise_overlap_s(t_p, self.kv_s, self.layers, tau) - t_p
        wait = mean_wait_s(rho, self.service_s, self.instances, 1.0, self.cs2)
        wait_q = wait_quantile_s(wait, jnp.minimum(rho, RHO_MAX), self.instances, q)
        mean = wait + t_p + exposed
        pct = wait_q + t_p * (1.0 + _z(q) * self.isl_cv) + exposed
        return mean, pct, rho


def prefill_pool(
    hw: Hardware,
    model: ModelSpec,
    plan: ParallelPlan,
    instances,
    max_batch,
    max_num_tokens,
    workload: Workload,
    receivers,
    cross,
    tau: float = 0.0,
):
    """Build the :class:`PrefillPool` and the prefill devices' memory use.

    ``receivers``: devices of the decode side that take one request's KV; ``cross``: relaxed
    indicator that the KV crosses scale-up domains (see the module docstring).
    """
    w = workload
    isl = w.isl_tokens
    u = jnp.maximum(isl * (1.0 - w.prefix_hit_rate), 1.0)
    prefix = isl * w.prefix_hit_rate
    b_tok = safe_div(plan.dp * max_num_tokens, u)
    b_cap = smooth_min2(jnp.maximum(max_batch, 1e-6), b_tok, tau)
    b1 = jnp.minimum(b_cap, 1.0)

    def t_iter(b):
        gpu = iteration(hw, model, plan, prefill_batch(b, u, prefix), tau).latency_s
        return smooth_max2(gpu, host_overhead_s(b), tau)

    t_cap, t1 = t_iter(b_cap), t_iter(b1)
    layers = model.num_layers
    kv_bytes = kv_transfer_bytes(model, isl, plan.kv_dtype)
    links = smooth_min2(plan.tp * plan.pp, receivers, tau)
    per_layer = p2p_cost(hw, safe_div(kv_bytes, layers * links), cross, tau).time_s
    kv_s = layers * per_layer
    service = smooth_max2(safe_div(t_cap, b_cap), safe_div(kv_s, plan.dp), tau)
    pool = PrefillPool(
        instances=jnp.maximum(instances, 1e-9),
        b1=b1,
        b_cap=b_cap,
        t1_s=t1,
        t_cap_s=t_cap,
        kv_s=kv_s,
        service_s=service,
        layers=layers,
        cs2=w.isl_cv**2,
        isl_cv=w.isl_cv,
    )
    mem = memory_usage(hw, model, plan, prefill_batch(b_cap, u, prefix))
    return pool, mem


def _illinois(g, lo, g_lo, hi, g_hi, iterations: int):
    """Root of increasing ``g`` on ``[lo, hi]`` (``g_lo < 0``) by Illinois regula falsi."""

    def body(_, c):
        a, fa, b, fb, side = c
        den = fb - fa
        ok = den != 0
        x = jnp.where(ok, (a * fb - b * fa) / jnp.where(ok, den, 1.0), 0.5 * (a + b))
        x = jnp.clip(x, jnp.minimum(a, b), jnp.maximum(a, b))
        fx = g(x)
        on_a = fx * fa > 0  # same sign as the a end: move a
        a2 = jnp.where(on_a, x, a)
        fa2 = jnp.where(on_a, fx, jnp.where(side < 0, 0.5 * fa, fa))
        b2 = jnp.where(on_a, b, x)
        fb2 = jnp.where(on_a, jnp.where(side > 0, 0.5 * fb, fb), fx)
        side2 = jnp.where(on_a, 1.0, -1.0)
        return a2, fa2, b2, fb2, side2

    a, fa, b, fb, _ = lax.fori_loop(0, iterations, body, (lo, g_lo, hi, g_hi, jnp.zeros(())))
    den = fb - fa
    ok = den != 0
    return jnp.where(ok, (a * fb - b * fa) / jnp.where(ok, den, 1.0), 0.5 * (a + b))


def _newton(b, r, slope, bmax):
    """One Newton step ``b - r/slope`` on ``[0, bmax]`` (no step where the slope is not > 0)."""
    ok = slope > 0
    return jnp.clip(b - jnp.where(ok, r / jnp.where(ok, slope, 1.0), 0.0), 0.0, bmax)


class ServingSolution(eqx.Module):
    """Steady state of a prefill pool feeding a decode pool (float leaves)."""

    batch: FloatScalarLike = eqx.field(converter=as_float_array)
    rate_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
    ttft_s: FloatScalarLike = eqx.field(converter=as_float_array)
    ttft_pct_s: FloatScalarLike = eqx.field(converter=as_float_array)
    tpot_s: FloatScalarLike = eqx.field(converter=as_float_array)
    utilisation: FloatScalarLike = eqx.field(converter=as_float_array)
    capacity_per_s: FloatScalarLike = eqx.field(converter=as_float_array)


def _interp_nodes(b, bmax, t_nodes):
    """Piecewise-linear interpolation of ``t_nodes`` given at ``B = bmax·(i/(K-1))²``."""
    k = t_nodes.shape[0] - 1
    s = jnp.clip(safe_div(b, bmax), 0.0, 1.0)
    i = jnp.clip(jnp.floor(jnp.sqrt(s) * k), 0, k - 1).astype(int)
    u0 = (i / k) ** 2
    u1 = ((i + 1) / k) ** 2
    t0, t1 = jnp.take(t_nodes, i), jnp.take(t_nodes, i + 1)
    return t0 + (t1 - t0) * (s - u0) / (u1 - u0)


def solve_serving(tpot_fn, args, units, max_batch, pool: PrefillPool, workload, tau=0.0):
    """Decode batch, request rate and latencies of a prefill pool feeding a decode pool.

    ``tpot_fn(args, B) -> (TPOT, aux)``: decode step time at ``B`` running sequences per
    decode unit (``aux``: anything to report at the solved batch); ``args``: the pytree it
    depends on; ``units``: decode units (instances or attention devices) holding ``B``
    sequences each. Equations in the module docstring.

    Numerics: ``TPOT(B)`` is evaluated at ``TPOT_NODES`` batches ``B_max·(i/(K-1))²`` (one
    vmapped call) and interpolated piecewise-linearly for the root search (Illinois,
    ``ROOT_ITERATIONS`` steps, cheap scalar work); a Newton step with the exact ``TPOT`` moves
    onto the exact root and a second polishes it. Gradients come from that last step alone
    (implicit-function theorem), not from the search iterations.
    """
    w = workload
    closed = w.load_mode == "closed"
    q = w.slo.quantile
    steps = jnp.maximum(w.osl_tokens - 1.0, 1e-3)
    bmax = jnp.maximum(max_batch, 1e-6)

    def resid(tpot, b):
        x = safe_div(units * b, steps * tpot)
        if closed:
            # first B where either the clients are all placed or the prefill pool saturates
            placed = safe_div(units * b + x * pool.ttft(x, q, tau)[0], w.concurrency) - 1.0
            return jnp.maximum(placed, safe_div(x, RHO_MAX * pool.capacity_per_s) - 1.0)
        return safe_div(x, w.arrival_rate_per_s) - 1.0

    u = jnp.asarray([(i / (TPOT_NODES - 1)) ** 2 for i in range(TPOT_NODES)])
    t_nodes = jax.vmap(lambda b: tpot_fn(args, b)[0])(u * bmax)
    g_s = lambda b: resid(_interp_nodes(b, bmax, t_nodes), b)
    g_hi = resid(t_nodes[-1], bmax)
    # The bracketing search only locates the root; its iterations are not differentiated
    # (regula-falsi updates divide by residual differences that vanish at convergence, so
    # their derivatives are garbage). The Newton step below carries the whole derivative:
    # with b0 and the slope held constant, db/dθ = -(∂r/∂θ)/(∂r/∂B) at the root, the
    # implicit-function theorem.
    # The interpolant's root can sit ~10% off the exact one where TPOT(B) bends (few nodes
    # at small B), so one undifferentiated Newton step with the exact TPOT (interpolant
    # slope) moves onto the root before the differentiated step is taken there.
    # Slopes are never a forward-mode pass through the whole step (~2.5x its cost): the
    # first Newton step takes the interpolant's, the differentiated one a secant through
    # two exact evaluations (below).
    slope_at = lambda b: lax.stop_gradient(jax.jvp(g_s, (b,), (jnp.ones(()),))[1])
    b0 = _illinois(g_s, jnp.zeros(()), -jnp.ones(()), bmax, g_hi, ROOT_ITERATIONS)
    b0 = lax.stop_gradient(jnp.clip(b0, 0.0, bmax))

    # Exact TPOT at b0 with every input held constant (forward only: no tangents to trace
    # or compile; this halves the decode step's share of a gradient's compile time) for the
    # undifferentiated Newton step onto the exact root b1; at b1, differentiated, for the
    # Newton step that carries the IFT derivative to b; at b, TPOT and its breakdown.
    # (A first-order expansion of TPOT around b1 with the interpolant's slope would save
    # the last evaluation, but its chord slope is up to 3x off TPOT'(B) where the step
    # bends, and so was the derivative of TPOT.)
    const_args = jax.tree_util.tree_map(
        lambda x: lax.stop_gradient(x) if eqx.is_array(x) else x, args
    )
    t_b0 = lax.stop_gradient(tpot_fn(const_args, b0)[0])
    saturated = g_hi < 0  # no root: the decode pool runs full (B = B_max)
    b1 = lax.stop_gradient(_newton(b0, resid(t_b0, b0), slope_at(b0), bmax))
    t_b1 = tpot_fn(args, b1)[0]
    # The IFT step's B-slope: TPOT'(b1) from the secant through the two exact evaluations
    # (b0 and b1 are a Newton step apart, far closer than the interpolant's nodes, whose
    # chords can be off TPOT' by a factor of 3 where the step bends); the interpolant's
    # slope where the two points nearly coincide (the secant would be rounding noise).
    gap = b1 - b0
    near = jnp.abs(gap) <= 1e-4 * jnp.maximum(b1, 1e-9)
    t_prime = jnp.where(
        near,
        jax.jvp(lambda x: _interp_nodes(x, bmax, t_nodes), (b1,), (jnp.ones(()),))[1],
        (lax.stop_gradient(t_b1) - t_b0) / jnp.where(near, 1.0, gap),
    )
    t1c, t_prime = lax.stop_gradient(t_b1), lax.stop_gradient(t_prime)
    t_lin = lambda x: t1c + t_prime * (x - b1)  # TPOT near b1 (constant to the outer AD)
    slope_b1 = lax.stop_gradient(jax.jvp(lambda x: resid(t_lin(x), x), (b1,), (jnp.ones(()),))[1])
    b = _newton(b1, resid(t_b1, b1), slope_b1, bmax)
    b = jnp.where(saturated, bmax, b)
    tpot, aux = tpot_fn(args, b)
    x_d = safe_div(units * b, steps * tpot)
    cap_d = safe_div(units * bmax, steps * t_nodes[-1])
    cap_p = pool.capacity_per_s
    if closed:
        x = x_d
        ttft, ttft_pct, rho_p = pool.ttft(x, q, tau)
        # clients the pools cannot hold (decode slots full or prefill at RHO_MAX) wait
        # for admission (Little's law), so X·R = N exactly
        slot = safe_div(w.concurrency - (units * b + x * ttft), x)
        ttft, ttft_pct = ttft + slot, ttft_pct + slot
        util = rho_p
    else:
        lam = w.arrival_rate_per_s
        ttft, ttft_pct, rho_p = pool.ttft(lam, q, tau)
        util = smooth_max2(rho_p, safe_div(lam, cap_d), tau)
        x = smooth_min2(lam, smooth_min2(cap_p, cap_d, tau), tau)
    return ServingSolution(
        batch=b,
        rate_per_s=x,
        ttft_s=ttft,
        ttft_pct_s=ttft_pct,
        tpot_s=tpot,
        utilisation=util,
        capacity_per_s=smooth_min2(cap_p, cap_d, tau),
    ), aux


class Disaggregated(AbstractServingScheme):
    """P/D disaggregation: ``prefill_instances`` × ``prefill_plan`` feed
    ``decode_instances`` × ``decode_plan`` through a KV-cache transfer.

    Fields (float leaves): ``prefill_instances``, ``decode_instances``; ``prefill_max_batch``
    (prompts per prefill iteration); ``decode_max_batch`` (running sequences per decode
    instance); ``max_num_tokens`` (prefill token budget per iteration per attention replica).
    ``prefill_hw``/``decode_hw``: the pools' hardware (None = the ``hw`` argument; the KV
    transfer uses the prefill side's fabric). Equations: module docstring.
    """

    prefill_plan: ParallelPlan
    decode_plan: ParallelPlan
    prefill_instances: FloatScalarLike = eqx.field(converter=as_float_array)
    decode_instances: FloatScalarLike = eqx.field(converter=as_float_array)
    prefill_max_batch: FloatScalarLike = eqx.field(converter=as_float_array)
    decode_max_batch: FloatScalarLike = eqx.field(converter=as_float_array)
    max_num_tokens: FloatScalarLike = eqx.field(converter=as_float_array, default=8192.0)
    prefill_hw: Hardware | None = None
    decode_hw: Hardware | None = None

    def devices(self):
        return (
            self.prefill_instances * self.prefill_plan.devices
            + self.decode_instances * self.decode_plan.devices
        )

    def metrics(
        self, hw: Hardware, model: ModelSpec, workload: Workload, tau: float = 0.0
    ) -> Metrics:
        """Steady-state serving metrics (equations in the module docstring)."""
        w = workload
        hw_p = self.prefill_hw if self.prefill_hw is not None else hw
        hw_d = self.decode_hw if self.decode_hw is not None else hw
        pd, dd = self.prefill_plan, self.decode_plan
        cross = cross_domain(hw_p, self.devices())
        pool, mem_p = prefill_pool(
            hw_p,
            model,
            pd,
            self.prefill_instances,
            self.prefill_max_batch,
            self.max_num_tokens,
            w,
            dd.tp * dd.pp,
            cross,
            tau,
        )
        ctx = w.isl_tokens + 0.5 * w.osl_tokens

        def tpot_fn(a, b):
            h, mdl, plan, c = a
            step = iteration(h, mdl, plan, decode_batch(b, c), tau)
            return smooth_max2(step.latency_s, host_overhead_s(b), tau), step

        sol, step = solve_serving(
            tpot_fn,
            (hw_d, model, dd, ctx),
            jnp.maximum(self.decode_instances, 1e-9),
            self.decode_max_batch,
            pool,
            w,
            tau,
        )
        mem_d = memory_usage(hw_d, model, dd, decode_batch(sol.batch, w.isl_tokens + w.osl_tokens))
        margin = jnp.minimum(
            safe_div(mem_p.margin_bytes, mem_p.capacity_bytes),
            safe_div(mem_d.margin_bytes, mem_d.capacity_bytes),
        )
        return finish_metrics(
            workload=w,
            ttft_s=sol.ttft_s,
            ttft_pct_s=sol.ttft_pct_s,
            tpot_s=sol.tpot_s,
            tpot_pct_s=sol.tpot_s,
            throughput_tok_s=sol.rate_per_s * w.osl_tokens,
            devices=self.devices(),
            utilisation=sol.utilisation,
            memory_margin_frac=margin,
            decode_batch=sol.batch,
            decode_step=step,
        )
