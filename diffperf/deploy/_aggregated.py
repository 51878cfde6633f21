"""Aggregated serving: continuous batching with chunked prefill on identical model replicas.

Steady-state fluid model of one instance (TensorRT-LLM / vLLM / SGLang in-flight batching):
every iteration runs one decode token for each running sequence plus up to the remaining
token budget of prefill chunks. Notation (per instance; ``C = max_num_tokens · dp`` is the
instance's token budget per iteration):

- ``B = min(N_inst, max_batch)`` running sequences (closed loop, ``N_inst = N / instances``);
  open loop: request rate ``X = λ / instances``.
- ``T`` mean iteration time (the unknown of a fixed point), ``X`` requests/s,
  ``D = X (OSL-1) T`` decoding sequences, ``P = X · ISL_eff · T`` prefill tokens per iteration
  on average (``ISL_eff = ISL (1 - prefix_hit)``; cached tokens are attended to and held in
  KV but not recomputed).
- Prefill arrives in clumps: an iteration that carries prefill carries
  ``P_h = min(ISL_eff + P, C - D)`` tokens (the prompt plus those that arrived during one
  iteration; closed-loop clients desynchronise in practice, so the same form is used). A
  fraction ``φ = P / P_h`` of iterations is mixed, the rest decode-only, so
  ``T = (1-φ) T_dec + φ T_mix`` with ``T_dec`` ≈ ``iteration(decode D)`` and
  ``T_mix`` ≈ ``iteration(decode D + P_h prefill)`` (the surrogate below). This is where
  the decode slowdown caused by mixed prefill chunks comes from (e.g. Llama-3.1-8B, H100,
  TP1, 64 clients, ISL 2048 / OSL 128: ``T`` ≈ 2.6× the pure decode step).
- Step-time surrogate (the one approximation of the solve): the GPU time of an iteration is
  taken piecewise-linear in the decode batch through a few decode-only anchors (closed loop:
  ``B/2`` and ``B``; open loop: 1, ``M/4``, ``M`` = max_batch) plus the prefill increment
  measured at one anchor batch (closed ``B``, open 1 sequence), affine in the prefill tokens
  between one prompt and the full remaining budget. The 4 (closed) or 5 (open) anchors are
  exact ``iteration`` calls in one vmapped call; the cold-start burst iteration uses the
  surrogate. The fixed point below is then solved on scalars (damped iteration, then one
  Newton step that carries the implicit-function gradient), so derivatives are the secant
  slopes of the step model rather than its straight-through tile staircase. Measured against
  the previous solver (40 damped iterations on exact ``iteration`` calls, which 2-cycles
  across tile jumps by ~1%): DeepSeek-V3 on 64 x H800 grid (chat, saturating), median
  |rel diff| 0.1% TPOT / 0.2% TTFT, p99 3% / 4%, max 5% / 5.5%; Llama-3.1-8B/70B on H100
  closed loop median ≤ 0.4%, max 7%; open loop median ≤ 0.4%, max 9% except near prefill
  saturation, where the mean-iteration equation is ill-conditioned (one 70B point: 32%);
  served_h100_llama31_8b.csv rows median 0.5% TTFT / 0.6% TPOT, max 2% / 4%.
- Each iteration time is ``max(GPU time, host time)`` with the engine's host (scheduler,
  sampling, response) work ``host_overhead_s + host_overhead_s_per_seq · sequences`` overlapped
  with the GPU (TensorRT-LLM's overlap scheduler).
- Closed loop: ``X = B / R_eng``, ``R_eng = TTFT_eng + (OSL-1) T``; clients beyond the
  engine's ``max_batch`` wait ``(N_inst - max_batch)⁺ / X`` (Little's law), so
  ``X · (TTFT + (OSL-1) TPOT) = N_inst``.
- ``TTFT_eng`` = residual of the iteration in flight ``E[T²]/(2 E[T])`` + queueing for prefill
  capacity (M/G/1 at ``ρ = P / (C - D)``, Sakasegawa/P-K; open loop only — a closed loop
  cannot overfill its budget in steady state) + ``max(1, ISL_eff/(C-D))`` mixed iterations
  carrying the prompt. Measured TTFT adds ``request_overhead_s`` (the server frontend:
  HTTP, tokenisation, admission, first streamed chunk) and ``output_lag_iterations``
  decode iterations (the overlap scheduler emits a token one iteration after computing it).
- ``TPOT`` = ``T``; its percentile treats the mixed iterations a request sees during its
  ``OSL-1`` steps as binomial(``OSL-1``, ``φ``) and uses a normal approximation
  ``T + z_q (T_mix - T_dec) sqrt(φ(1-φ)/(OSL-1))``. TTFT percentiles: the exponential-tail
  queue quantile plus the prompt's prefill scaled by ``1 + z_q · isl_cv`` (normal ISL).
- Open loop utilisation ``ρ = max(P/(C-D), D/max_batch)``; ``ρ ≥ 1`` is reported infeasible
  (rate) while the times use the capped utilisation, so they stay finite.
- Memory: weights + the KV of ``B`` sequences at the mean context ``ISL + OSL/2`` + the
  activations of a full mixed iteration; ``memory_margin_frac = margin / capacity``.

Benchmark-harness terms (defaults 0 = pure steady state; :func:`predict_served_runs` sets them):
``cold_start_frac`` is the fraction of measured requests sent in the initial burst, when all
clients arrive at once (a harness sending ``G · N`` requests has ``1/G``); their mean TTFT is
``(n_b + 1)/2`` burst iterations, ``n_b = max(1, B ISL_eff / C)`` (as in ``estimate``).
``client_queue_requests`` counts requests the load generator holds issued but not yet
admitted (their TTFT clock runs from issue), adding ``client_queue_requests / X`` to TTFT.
"""

import statistics

import equinox as eqx
import jax
import jax.numpy as jnp

from .._numerics import as_float_array, relu_smooth, safe_div, safe_sqrt, smooth_max2, smooth_min2
from .._types import FloatScalarLike
from ..hardware import Hardware
from ..model import ModelSpec
from ..stages import ParallelPlan, iteration, memory_usage, mixed_batch
from ._metrics import Metrics
from ._queueing import RHO_MAX, mean_wait_s, wait_quantile_s
from ._scheme import AbstractServingScheme, finish_metrics
from ._workload import Workload


# Host work per iteration of TensorRT-LLM's PyTorch backend (1.0): fitted to the TP8 rows of
# shared/data/e2e/served_h100_llama31_8b.csv, where the GPU step is short and the measured
# TPOT grows by ≈ 37 µs per running sequence (4.3 ms GPU vs 6.6 ms measured at 64 sequences,
# 5.4 vs 10.2 ms at 128). The fixed part is the scheduler/launch floor of an iteration.
HOST_OVERHEAD_S = 0.5e-3
HOST_OVERHEAD_S_PER_SEQ = 37e-6
# Per-request frontend time on the TTFT path (HTTP, tokenisation, admission, first streamed
# chunk) of trtllm-serve: the low-concurrency rows of served_h100_llama31_8b.csv measure TTFT
# ≈ 30 ms above the engine's prefill + one iteration at every TP (median over the rows with
# ≤ 16 clients: 28.5 ms).
REQUEST_OVERHEAD_S = 0.03
FIXED_POINT_ITERATIONS = 40
FIXED_POINT_DAMPING = 0.6
ANCHOR_LOW_FRAC = 0.5  # the lower decode-only anchor, as a fraction of the running batch


def _z(q: float | None) -> float:
    return 0.0 if q is None else statistics.NormalDist().inv_cdf(q)


def _solve(f, running, dec_steps, rate_inst, closed: bool):
    """Fixed point ``v = f(v)`` of ``v = (T, X)`` on the step-time surrogate.

    Damped iteration ``v <- (1-d) v + d f(v)`` (cheap scalar work, no gradient), then one
    Newton step ``v* - (I - J)^-1 (v* - f(v*))`` with ``J = df/dv`` held constant: its value
    polishes the root and its gradient is the implicit-function one,
    ``dv/dθ = (I - J)^-1 df/dθ``.
    """
    t0 = jnp.asarray(0.02)
    x0 = safe_div(running, (dec_steps + 2.0) * t0) if closed else rate_inst
    v0 = jax.lax.stop_gradient(jnp.stack([t0, x0]))
    f_sg = lambda v: jax.lax.stop_gradient(f(v))
    body = lambda _, v: (1.0 - FIXED_POINT_DAMPING) * v + FIXED_POINT_DAMPING * f_sg(v)
    v_star = jax.lax.fori_loop(0, FIXED_POINT_ITERATIONS, body, v0)
    jac = jax.lax.stop_gradient(jax.jacfwd(f)(v_star))
    a = jnp.eye(2) - jac
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    ok = jnp.abs(det) > 1e-12
    inv = jnp.stack([jnp.stack([a[1, 1], -a[0, 1]]), jnp.stack([-a[1, 0], a[0, 0]])])
    inv = jnp.where(ok, inv / jnp.where(ok, det, 1.0), jnp.eye(2))
    g = v_star - f(v_star)
    return v_star - inv @ g


class Aggregated(AbstractServingScheme):
    """Continuous batching with chunked prefill on ``instances`` replicas of ``plan``.

    Fields (float leaves): ``plan``; ``instances`` (model replicas); ``max_batch`` (the
    engine's max running sequences per instance); ``max_num_tokens`` (token budget per
    iteration per attention replica = the prefill chunk, TensorRT-LLM default 8192);
    ``host_overhead_s`` / ``host_overhead_s_per_seq`` (engine host time per iteration,
    overlapped with the GPU); ``cold_start_frac`` / ``client_queue_requests`` (benchmark
    harness terms, 0 = steady state). The model is described in the module docstring.
    """

    plan: ParallelPlan
    instances: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    max_batch: FloatScalarLike = eqx.field(converter=as_float_array, default=256.0)
    max_num_tokens: FloatScalarLike = eqx.field(converter=as_float_array, default=8192.0)
    host_overhead_s: FloatScalarLike = eqx.field(converter=as_float_array, default=HOST_OVERHEAD_S)
    host_overhead_s_per_seq: FloatScalarLike = eqx.field(
        converter=as_float_array, default=HOST_OVERHEAD_S_PER_SEQ
    )
    request_overhead_s: FloatScalarLike = eqx.field(
        converter=as_float_array, default=REQUEST_OVERHEAD_S
    )
    output_lag_iterations: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    cold_start_frac: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    client_queue_requests: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)

    def devices(self):
        return self.instances * self.plan.devices

    def metrics(
        self, hw: Hardware, model: ModelSpec, workload: Workload, tau: float = 0.0
    ) -> Metrics:
        """Steady-state serving metrics (see the module docstring for the equations)."""
        plan = self.plan
        w = workload
        q = w.slo.quantile
        z = _z(q)
        isl, osl = w.isl_tokens, w.osl_tokens
        hit = w.prefix_hit_rate
        isl_eff = jnp.maximum(isl * (1.0 - hit), 1.0)
        cached = isl * hit
        ctx = isl + 0.5 * osl  # mean context of a decoding sequence
        dec_steps = jnp.maximum(osl - 1.0, 0.0)
        budget = jnp.maximum(self.max_num_tokens * plan.dp, 1.0)
        max_batch = jnp.maximum(self.max_batch, 1.0)
        closed = w.load_mode == "closed"
        inst = jnp.maximum(self.instances, 1e-9)
        rate_inst = jnp.zeros(())
        if closed:
            n_inst = w.concurrency / inst
            running = smooth_min2(n_inst, max_batch, tau)
        else:
            n_inst = running = max_batch
            rate_inst = w.arrival_rate_per_s / inst

        def host(seqs):
            return self.host_overhead_s + self.host_overhead_s_per_seq * seqs

        def chunking(p_h):
            """(chunk, prefix) of an iteration carrying ``p_h`` prefill tokens."""
            chunk = smooth_min2(isl_eff, p_h, tau)
            return chunk, cached + 0.5 * relu_smooth(isl_eff - chunk, 0.0)

        def avail_of(decode):
            # decode tokens take the budget first; keep >= 5% of it for prefill chunks
            return jnp.maximum(budget - decode, 0.05 * budget)

        # initial burst (cold start): all clients' prompts at once, C tokens per iteration
        burst_seqs = running
        burst_tokens = burst_seqs * isl_eff
        n_b = jnp.maximum(safe_div(burst_tokens, budget), 1.0)
        p_b = smooth_min2(burst_tokens, budget, tau)
        chunk_b = smooth_min2(isl_eff, p_b, tau)

        # Anchors of the step-time surrogate, one vmapped call (one compiled copy of the
        # step model): decode-only at the nodes ``d_nodes``, and mixed at ``d_m`` sequences
        # with one prompt (p_1) and with the budget left by the decode tokens (p_2). Closed
        # loop: nodes (B/2, B), d_m = B (the solved batch is at most B, mostly near it); open
        # loop: nodes (1, M/4, M), d_m = 1 (any batch up to max_batch M is possible; below one
        # sequence the step is extrapolated, since tiles round a fraction of a sequence up).
        if closed:
            d_nodes = [ANCHOR_LOW_FRAC * running, running]
            d_m = running
        else:
            d_nodes = [jnp.ones(()), 0.25 * max_batch, max_batch]
            d_m = d_nodes[0]
        k = len(d_nodes)
        p_2 = avail_of(d_m)
        p_1 = smooth_min2(isl_eff, p_2, tau)
        (c_1, pre_1), (c_2, pre_2) = chunking(p_1), chunking(p_2)
        zero, one = jnp.zeros(()), jnp.ones(())
        batch = mixed_batch(
            jnp.stack([*d_nodes, d_m, d_m]),
            jnp.stack([ctx] * (k + 2)),
            jnp.stack([zero] * k + [p_1, p_2]),
            jnp.stack([one] * k + [c_1, c_2]),
            jnp.stack([zero] * k + [pre_1, pre_2]),
        )
        res = jax.vmap(lambda bt: iteration(hw, model, plan, bt, tau))(batch)
        gpu = res.latency_s

        def interp(y, decode):
            """Piecewise-linear in the decode batch through the decode nodes (extrapolated
            linearly beyond the end nodes); ``y`` holds the node values first."""
            out = None
            for i in range(k - 1):
                lo, hi = d_nodes[i], d_nodes[i + 1]
                seg = y[i] + safe_div(y[i + 1] - y[i], hi - lo) * (decode - lo)
                out = seg if out is None else jnp.where(decode >= lo, seg, out)
            return out

        # GPU time: piecewise-linear in the decode batch, plus the prefill tokens' increment
        # measured at d_m, affine in the prefill tokens (secant p_1..p_2)
        g_m = gpu[k - 1] if closed else gpu[0]
        inc_1, inc_2 = gpu[k] - g_m, gpu[k + 1] - g_m
        spread_ok = p_2 - p_1 > 1e-6 * p_2
        inc_slope = jnp.where(
            spread_ok,
            safe_div(inc_2 - inc_1, jnp.where(spread_ok, p_2 - p_1, 1.0)),
            safe_div(inc_2, p_2),
        )

        def step_times(decode, p_h, chunk):
            """(decode-only, mixed) iteration times: max(GPU, overlapped host) each."""
            g_dec = interp(gpu, decode)
            g_mix = g_dec + inc_2 + inc_slope * (p_h - p_2)
            t_dec = smooth_max2(g_dec, host(decode), tau)
            t_mix = smooth_max2(g_mix, host(decode + safe_div(p_h, chunk)), tau)
            return t_dec, t_mix

        def state(v):
            """Iteration mix and TTFT pieces for mean iteration time ``t`` and rate ``x``."""
            t, x = v[0], v[1]
            decode = jnp.minimum(x * dec_steps * t, max_batch)
            avail = avail_of(decode)
            p_mean = x * isl_eff * t
            # the iteration carrying a prompt: it plus the prompts that arrived during one
            # iteration (on average P), at most the budget left by the decode tokens
            p_h = smooth_min2(isl_eff + p_mean, avail, tau)
            chunk, _ = chunking(p_h)
            t_dec, t_mix = step_times(decode, p_h, chunk)
            phi = jnp.minimum(safe_div(p_mean, p_h), 1.0)
            t_mean = t_dec + phi * (t_mix - t_dec)
            e_t2 = (1.0 - phi) * t_dec**2 + phi * t_mix**2
            residual = safe_div(e_t2, 2.0 * t_mean)
            n_chunks = jnp.maximum(safe_div(isl_eff, avail), 1.0)
            prefill = n_chunks * t_mix
            rho_p = safe_div(p_mean, avail)
            # frontend + the iteration by which the overlapped host emits a token late
            fixed = self.request_overhead_s + self.output_lag_iterations * t_dec
            if closed:
                wait = wait_q = jnp.zeros(())
            else:
                service = safe_div(isl_eff, avail) * t_mix
                wait = mean_wait_s(rho_p, service, 1.0, 1.0, w.isl_cv**2)
                wait_q = wait_quantile_s(wait, rho_p, 1.0, q)
            if closed:  # Little's law over the admitted clients: B = X (TTFT + (OSL-1) T)
                r = fixed + residual + prefill + wait + dec_steps * t_mean
                x_new = safe_div(running, r)
            else:
                x_new = rate_inst
            return dict(
                v=jnp.stack([t_mean, x_new]),
                x=x_new,
                decode=decode,
                p_h=p_h,
                t_dec=t_dec,
                t_mix=t_mix,
                phi=phi,
                t_mean=t_mean,
                residual=residual,
                prefill=prefill,
                wait=wait,
                wait_q=wait_q,
                rho_p=rho_p,
                fixed=fixed,
            )

        t_b = step_times(0.5 * burst_seqs, p_b, chunk_b)[1]
        v = _solve(lambda u: state(u)["v"], running, dec_steps, rate_inst, closed)
        s = state(v)
        x = s["x"]
        tpot = s["t_mean"]
        fixed, residual, prefill, wait, wait_q, rho_p = (
            s["fixed"],
            s["residual"],
            s["prefill"],
            s["wait"],
            s["wait_q"],
            s["rho_p"],
        )
        # the decode step at the solved batch: its breakdown, interpolated like its time
        dec_step = jax.tree_util.tree_map(lambda a: interp(a, s["decode"]), res)

        if closed:
            # clients beyond the engine's max batch queue for a slot (Little's law)
            slot_wait = safe_div(relu_smooth(n_inst - max_batch, 0.0), x)
            utilisation = rho_p
        else:
            slot_wait = jnp.zeros(())
            utilisation = jnp.maximum(rho_p, safe_div(x * dec_steps * tpot, max_batch))
        client_wait = safe_div(self.client_queue_requests, x)
        ttft_ss = fixed + residual + prefill + wait + slot_wait + client_wait
        prefill_pct = prefill * (1.0 + z * w.isl_cv)
        ttft_ss_pct = fixed + residual + prefill_pct + wait_q + slot_wait + client_wait

        ttft_cold = self.request_overhead_s + 0.5 * (n_b + 1.0) * t_b
        f = self.cold_start_frac
        ttft = (1.0 - f) * ttft_ss + f * ttft_cold
        ttft_pct = (1.0 - f) * ttft_ss_pct + f * ttft_cold * (1.0 + z * w.isl_cv)

        spread = (s["t_mix"] - s["t_dec"]) * safe_sqrt(
            s["phi"] * (1.0 - s["phi"]) * safe_div(1.0, dec_steps)
        )
        tpot_pct = jnp.maximum(tpot + z * spread, s["t_dec"])

        # throughput: closed loop X = N / R (Little's law over the reported request latency,
        # so X (TTFT + (OSL-1) TPOT) = N holds exactly; the harness terms do not feed back into
        # the engine state), open loop the carried rate (capped once saturated)
        if closed:
            r_total = ttft_ss + dec_steps * tpot
            x_inst = safe_div(n_inst, r_total)
        else:
            x_inst = jnp.where(utilisation < RHO_MAX, x, x * safe_div(RHO_MAX, utilisation))
        throughput = x_inst * osl * inst

        mem = memory_usage(
            hw,
            model,
            plan,
            mixed_batch(running, ctx, s["p_h"], smooth_min2(isl_eff, s["p_h"], tau), cached),
        )
        margin_frac = safe_div(mem.margin_bytes, mem.capacity_bytes)
        return finish_metrics(
            workload=w,
            ttft_s=ttft,
            ttft_pct_s=ttft_pct,
            tpot_s=tpot,
            tpot_pct_s=tpot_pct,
            throughput_tok_s=throughput,
            devices=self.devices(),
            utilisation=utilisation,
            memory_margin_frac=margin_frac,
            decode_batch=s["decode"],
            decode_step=dec_step,
        )
