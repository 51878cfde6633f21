"""Pipeline: a DAG of stages placed on engines, each with its own batching; steady-state
throughput, latency, TTFT, utilisation and an SLO-penalised objective, all pure JAX.

**Model.** Requests arrive at rate ``λ`` (Poisson) at the single entry stage and follow the
routes: a stage with routes out sends fraction ``p`` of its requests along each (routing, e.g.
a router choosing between models; fractions out of a stage sum to 1, or to less when some
requests leave). Stage ``s`` is visited ``v_s`` times per request (``v = 1`` at the entry,
``v_s = Σ v_pred p``). It runs on ``share_s · count_e`` devices of engine ``e``, i.e.
``c_s = share_s count_e / devices_per_instance`` instances (a relaxed float).

**Batching** (per stage; ``S(B)`` = service of a batch of ``B`` on one instance):

- ``static`` (size ``B``): a request waits for its batch to fill, ``(B-1)/(2 λ_s)``; batches
  are ``B`` arrivals, so their inter-arrival SCV is ``c_a²/B``; capacity ``c B / S(B)``.
- ``window`` (``W``, at most ``B_max``): a dispatcher closes a batch every ``W`` seconds; a
  request waits ``W/2`` on average, the mean non-empty batch holds
  ``b = λ_s W / (1 - e^{-λ_s W})`` (at most ``B_max``). Non-empty windows arrive at rate
  ``(1 - e^{-λ_s W}) / W`` (inter-arrival SCV ``e^{-λ_s W}``, geometric multiples of W) and
  their service varies with the Poisson batch size (SCV ``β² λ_s W / S(b)²``, ``β`` the
  chord slope of ``S``), so ``ρ_b = (1 - e^{-λ_s W}) S(b) / (W c)``: a window shorter than
  ``S(b)/c`` piles batches up. The batch grows with the load, so the capacity is evaluated
  at the offered load, ``λ_s / ρ_b``, at most ``c B_max / S(B_max)``.
- ``continuous`` (at most ``B_max``), two engines:

  * iteration-level (LLM decode, agent loops): sequences join at every iteration. By
    Little's law the mean batch solves ``B = λ_s S(B) / c`` in ``[1, B_max]`` with ``S``
    affine between ``S(1)`` and ``S(B_max)`` (exact for memory-bound decode; the chord
    over-estimates a convex ``S``), which is closed-form. A request waits for the next
    iteration boundary ``J/2`` with the probability ``P_w`` (Sakasegawa) that the engine is
    busy, plus an overflow queue where each of the ``c B_max`` slots is a server:
    ``ρ_max · W_q(ρ_max, S(B_max), c B_max)`` with ``ρ_max = λ_s S(B_max) / (B_max c)``.
  * run-to-completion (dynamic batching of every other stage): a free instance takes up to
    ``B_max`` waiting requests. The next batch holds the request that opens it plus those
    that arrived while all instances were busy: ``b = 1 + P_w λ_s S(b) / c`` (fixed point).
    Work-conserving view: the per-item service ``s = S(b)/b`` queues like M/D/c,
    ``W_q(λ_s s / c, s, c)``, and a request also waits for the batch-mates served with it:
    ``s (E_sb[b] - 1) / 2`` with the size-biased batch ``E_sb[b] = b + (b-1)/b`` (Poisson
    excess). Latency ``= max(W_q + s (1 + (E_sb - 1)/2), S(b))``. With ``B_max = 1`` this is
    Pollaczek-Khinchine for M/D/1 (exact) and Sakasegawa's M/D/c.

  Capacity ``c B_max / S(B_max)`` for both. Against the request-level simulation
  (:mod:`diffperf.pipeline._des`, tests/test_pipeline_des.py) mean latency agrees within a
  few percent up to 95% utilisation; at 99% the capped utilisation (``RHO_MAX = 0.98``)
  under-predicts, and above 100% the simulation diverges while the model reports the design
  infeasible with finite times.

Queueing of batches uses :func:`diffperf.deploy.mean_wait_s` (M/G/c, Sakasegawa) with
deterministic service (``c_s² = 0``) and the arrival SCV of the stage, propagated along the
DAG by Whitt's QNA linking equations (departure ``c_d² = 1 + (1-ρ²)(c_a² - 1) +
ρ²(c_s² - 1)/√c``, splitting ``p c_d² + 1 - p``, merging rate-weighted).

**Throughput** is the bottleneck: ``X = min_s cap_s / v_s`` (smooth min with temperature
``tau``; exact at 0). **Latency** of stage ``s`` = batching wait + queueing + ``S(B)`` +
idle (tool waits); end-to-end ``L(n) = T_n + Σ_succ p L(succ)`` from the entry; TTFT the
same recursion that stops at the stage marked ``first_token`` (its wait + time to the first
answer token). These are means over requests.

**Shared memory.** Stages on an engine with ``shared_memory = true`` (a CPU socket's DRAM)
split its bandwidth: stage ``o`` keeps the memory busy a fraction
``u_o = (λ_o / B_o) · M_o(B_o) · devices_per_instance / count`` of the time (``M`` = memory
leg of its service), and host-tier KV fetches of stages whose ``host_engine`` is this engine
add ``(λ_k / B_k) host_bytes_k / (count · bw)``. Stage ``s`` then sees ``1 - Σ_{o≠s} u_o``
of the bandwidth: ``S' = max(S, M / (1 - Σ_{o≠s} u_o))`` (capped at 95% contention).
Engines without shared memory partition their devices and do not contend.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._numerics import (
    as_float_array,
    safe_div,
    safe_log,
    smooth_max2,
    smooth_min_pos,
    softplus_penalty,
)
from .._types import FloatScalarLike
from ..deploy import mean_wait_s, prob_wait
from ..hardware import Hardware
from ._kv_tiers import KVTier
from ._stages import AbstractStage, AgentLoop, Decode, KVRetrieval


BATCHING_KINDS = ("static", "window", "continuous")
MAX_CONTENTION = 0.95
BATCH_FIXED_POINT_ITERATIONS = 8


class PipelineError(ValueError):
    """A pipeline whose structure or values are invalid (names the stage/field/value)."""


class Batching(eqx.Module):
    """How a stage forms batches: ``kind`` (static) and ``batch_size`` (static: B; window and
    continuous: the largest batch), ``window_s`` (window only)."""

    kind: str = eqx.field(static=True)
    batch_size: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    window_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)

    def __check_init__(self):
        if self.kind not in BATCHING_KINDS:
            raise PipelineError(f"batching = {self.kind!r} must be one of {BATCHING_KINDS}")


class Engine(eqx.Module):
    """A pool of ``count`` devices of one hardware preset, its KV memory tiers and whether
    its stages share one memory system (``shared_memory``, static)."""

    name: str = eqx.field(static=True)
    hw: Hardware
    count: FloatScalarLike = eqx.field(converter=as_float_array)
    kv_tiers: tuple
    shared_memory: bool = eqx.field(static=True, default=False)


class PlacedStage(eqx.Module):
    """A stage of the pipeline: its type and parameters, engine, batching and device share.

    ``first_token`` (static) marks the stage that produces the first answer token (TTFT);
    ``host_engine`` (static, optional) names the engine whose DRAM this stage's host-tier KV
    fetches read.
    """

    name: str = eqx.field(static=True)
    stage: AbstractStage
    engine: str = eqx.field(static=True)
    batching: Batching
    share: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    first_token: bool = eqx.field(static=True, default=False)
    host_engine: str = eqx.field(static=True, default="")


class Route(eqx.Module):
    """Edge ``src -> dst`` taken by ``fraction`` of the requests leaving ``src``."""

    src: str = eqx.field(static=True)
    dst: str = eqx.field(static=True)
    fraction: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)


class PipelineSLO(eqx.Module):
    """Targets on mean end-to-end latency and mean TTFT (seconds; 0 = no target)."""

    e2e_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    ttft_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)


class Pipeline(eqx.Module):
    """Stages (in any order), routes (a DAG with one entry stage), engines, the offered
    arrival rate (requests/s) and the SLO."""

    stages: tuple
    routes: tuple
    engines: tuple
    arrival_rate_per_s: FloatScalarLike = eqx.field(converter=as_float_array)
    slo: PipelineSLO = PipelineSLO()

    def __check_init__(self):
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise PipelineError(f"stage names must be unique, got {names}")
        engines = [e.name for e in self.engines]
        if len(set(engines)) != len(engines):
            raise PipelineError(f"engine names must be unique, got {engines}")
        for s in self.stages:
            if s.engine not in engines:
                raise PipelineError(
                    f"stage {s.name!r}: engine = {s.engine!r} is not one of {engines}"
                )
            if s.host_engine and s.host_engine not in engines:
                raise PipelineError(
                    f"stage {s.name!r}: host_engine = {s.host_engine!r} is not one of {engines}"
                )
            if isinstance(s.stage, KVRetrieval):
                tiers = [t.name for t in self.engine(s.engine).kv_tiers]
                for t in s.stage.tiers:
                    if t not in tiers:
                        raise PipelineError(
                            f"stage {s.name!r}: tier {t!r} is not a tier of engine "
                            f"{s.engine!r} ({tiers})"
                        )
        for r in self.routes:
            for end in (r.src, r.dst):
                if end not in names:
                    raise PipelineError(f"route {r.src!r} -> {r.dst!r}: no stage named {end!r}")
        topo_order(self)

    def engine(self, name: str) -> Engine:
        for e in self.engines:
            if e.name == name:
                return e
        raise PipelineError(f"no engine named {name!r}")

    def index(self, name: str) -> int:
        for i, s in enumerate(self.stages):
            if s.name == name:
                return i
        raise PipelineError(f"no stage named {name!r}")


def topo_order(p: Pipeline) -> tuple[int, ...]:
    """Stage indices in topological order (static); raises on cycles or several entries."""
    n = len(p.stages)
    if n == 0:
        raise PipelineError("a pipeline needs at least one stage")
    idx = {s.name: i for i, s in enumerate(p.stages)}
    indeg = [0] * n
    succ: list[list[int]] = [[] for _ in range(n)]
    for r in p.routes:
        succ[idx[r.src]].append(idx[r.dst])
        indeg[idx[r.dst]] += 1
    entries = [i for i in range(n) if indeg[i] == 0]
    if len(entries) != 1:
        raise PipelineError(
            f"a pipeline needs exactly one entry stage (no incoming route), got "
            f"{[p.stages[i].name for i in entries]}"
        )
    order, ready = [], list(entries)
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    if len(order) != n:
        cyc = [p.stages[i].name for i in range(n) if i not in order]
        raise PipelineError(f"routes form a cycle through {cyc}")
    return tuple(order)


class PipelineResult(eqx.Module):
    """Per-stage arrays (aligned with ``pipeline.stages``) and pipeline scalars (SI units).

    ``throughput_per_s`` is the bottleneck capacity (requests/s); ``bottleneck`` is the
    index of the stage that sets it (exact, not differentiable). Latencies are means at the
    offered arrival rate; a stage with ``utilisation >= 1`` makes the design infeasible and
    its waits are those at the capped utilisation (finite).
    """

    visits: jax.Array
    arrival_per_s: jax.Array
    instances: jax.Array
    batch: jax.Array
    service_s: jax.Array
    wait_s: jax.Array
    latency_s: jax.Array
    capacity_per_s: jax.Array
    utilisation: jax.Array
    contention: jax.Array
    memory_margin_bytes: jax.Array
    throughput_per_s: jax.Array
    bottleneck: jax.Array
    e2e_latency_s: jax.Array
    ttft_s: jax.Array
    devices: jax.Array
    throughput_per_device: jax.Array
    feasible: jax.Array
    meets_slo: jax.Array


def visit_ratios(p: Pipeline, order=None):
    """Mean visits per request of every stage (list of scalars, stage order)."""
    order = topo_order(p) if order is None else order
    idx = {s.name: i for i, s in enumerate(p.stages)}
    v = [jnp.asarray(0.0)] * len(p.stages)
    v[order[0]] = jnp.asarray(1.0)
    for i in order:
        for r in p.routes:
            if idx[r.src] == i:
                v[idx[r.dst]] = v[idx[r.dst]] + v[i] * r.fraction
    return v


def _iteration_level(stage: AbstractStage) -> bool:
    return isinstance(stage, (Decode, AgentLoop))


def _costs(stage, hw, tiers, b1, b2, tau):
    batches = jnp.stack([jnp.asarray(b1, dtype=float), jnp.asarray(b2, dtype=float)])
    return jax.vmap(lambda b: stage.cost(hw, tiers, b, tau))(batches)


def _stage_batch(kind, bs, window, lam, c, s1, smax):
    """Operating batch of a stage (see module docstring), with S affine in B."""
    bmax = jnp.maximum(bs, 1.0)
    if kind == "static":
        return bmax
    if kind == "window":
        x = lam * window
        ok = x > 1e-9
        mean_nonempty = jnp.where(ok, safe_div(x, -jnp.expm1(-jnp.where(ok, x, 1.0))), 1.0)
        return jnp.clip(mean_nonempty, 1.0, bmax)
    beta = safe_div(smax - s1, bmax - 1.0)
    if kind == "continuous_iteration":
        den = c - lam * beta
        num = lam * (s1 - beta)
        b = jnp.where(den > 0, safe_div(num, jnp.where(den > 0, den, 1.0)), bmax)
        return jnp.clip(b, 1.0, bmax)
    # run-to-completion: the next batch holds the request that opens it plus the arrivals
    # while all instances were busy: b = 1 + P_w(ρ_b) λ S(b) / c (fixed point, unrolled)
    b = jnp.asarray(1.0)
    for _ in range(BATCH_FIXED_POINT_ITERATIONS):
        sb = s1 + beta * (b - 1.0)
        rho_b = jnp.clip(safe_div(lam * sb, b * c), 0.0, 1.0)
        b = jnp.clip(1.0 + prob_wait(rho_b, c) * safe_div(lam * sb, c), 1.0, bmax)
    return b


def evaluate(p: Pipeline, tau: float = 0.0) -> PipelineResult:
    """Steady-state performance of a pipeline (formulas in the module docstring).

    **Arguments:** the :class:`Pipeline`; ``tau`` the temperature of the bottleneck's smooth
    min and of the contention max (0 = exact).

    **Returns:** a :class:`PipelineResult`.
    """
    order = topo_order(p)
    n = len(p.stages)
    idx = {s.name: i for i, s in enumerate(p.stages)}
    lam = p.arrival_rate_per_s
    v = visit_ratios(p, order)
    lam_s = [lam * v[i] for i in range(n)]

    # --- first pass: uncontended costs at the operating and the largest batch ---------------
    eng = [p.engine(s.engine) for s in p.stages]
    inst, bop, s_op, s_max, m_op, c_all = [], [], [], [], [], []
    for i, s in enumerate(p.stages):
        e = eng[i]
        c = safe_div(s.share * e.count, s.stage.devices_per_instance)
        kind = s.batching.kind
        bmax = jnp.maximum(s.batching.batch_size, 1.0)
        if kind == "continuous":
            cc = _costs(s.stage, e.hw, e.kv_tiers, 1.0, bmax, tau)
            s1, smax = cc.service_s[0], cc.service_s[1]
            k2 = "continuous_iteration" if _iteration_level(s.stage) else kind
            b = _stage_batch(k2, bmax, s.batching.window_s, lam_s[i], c, s1, smax)
            w = safe_div(b - 1.0, bmax - 1.0)
            pick = lambda a, w=w: a[0] + w * (a[1] - a[0])  # noqa: E731
            op = jax.tree_util.tree_map(pick, cc)
            top = jax.tree_util.tree_map(lambda a: a[1], cc)
        else:
            b = _stage_batch(kind, bmax, s.batching.window_s, lam_s[i], c, 0.0, 0.0)
            cc = _costs(s.stage, e.hw, e.kv_tiers, b, bmax, tau)
            op = jax.tree_util.tree_map(lambda a: a[0], cc)
            top = jax.tree_util.tree_map(lambda a: a[1], cc)
        inst.append(c)
        bop.append(b)
        s_op.append(op)
        s_max.append(top)
        m_op.append(op.memory_s)
        c_all.append(cc)

    # --- memory-bandwidth contention on shared-memory engines -------------------------------
    u = []
    for i, s in enumerate(p.stages):
        rate_b = safe_div(lam_s[i], bop[i])
        u.append(rate_b * m_op[i] * safe_div(s.stage.devices_per_instance, eng[i].count))
    ext = {e.name: jnp.asarray(0.0) for e in p.engines}
    for i, s in enumerate(p.stages):
        if s.host_engine:
            he = p.engine(s.host_engine)
            bw = he.count * he.hw.accel.hbm.bw_bytes_per_s
            ext[he.name] = ext[he.name] + safe_div(
                safe_div(lam_s[i], bop[i]) * s_op[i].host_bytes, bw
            )
    factor = []
    for i, s in enumerate(p.stages):
        if not eng[i].shared_memory:
            factor.append(jnp.asarray(1.0))
            continue
        others = ext[s.engine] + sum(
            (u[j] for j in range(n) if j != i and p.stages[j].engine == s.engine),
            jnp.asarray(0.0),
        )
        avail = 1.0 - jnp.clip(others, 0.0, MAX_CONTENTION)
        op = s_op[i]
        slowed = smooth_max2(op.service_s, safe_div(op.memory_s, avail), tau)
        factor.append(safe_div(slowed, op.service_s) + jnp.where(op.service_s > 0, 0.0, 1.0))

    # --- per stage: capacity, waits, latency; QNA variability along the DAG -----------------
    ca2 = [jnp.asarray(0.0)] * n
    ca2[order[0]] = jnp.asarray(1.0)
    incoming_rate = [jnp.asarray(0.0)] * n
    cd2 = [jnp.asarray(1.0)] * n
    cap, rho, wait, lat, first, mem_margin = ([None] * n for _ in range(6))
    for i in order:
        s = p.stages[i]
        if i != order[0]:
            ca2[i] = safe_div(ca2[i], incoming_rate[i]) + jnp.where(incoming_rate[i] > 0, 0.0, 1.0)
        f = factor[i]
        op, top = s_op[i], s_max[i]
        serv = op.service_s * f
        serv_max = top.service_s * f
        c, b, li = inst[i], bop[i], lam_s[i]
        kind = s.batching.kind
        bmax = jnp.maximum(s.batching.batch_size, 1.0)
        if kind == "static":
            cap_i = safe_div(c * b, serv)
            rho_b = safe_div(li * serv, b * c)
            fill = safe_div(b - 1.0, 2.0 * li)
            w = fill + mean_wait_s(rho_b, serv, c, safe_div(ca2[i], b), 0.0)
        elif kind == "window":
            win = s.batching.window_s
            x_w = li * win
            p_ne = -jnp.expm1(-x_w)  # share of windows that hold a request
            rho_b = safe_div(p_ne * serv, win * c)
            beta = safe_div(serv_max - serv, bmax - b)  # service per extra request
            cs2 = safe_div(beta**2 * x_w, serv**2)  # Poisson batch size
            ca2_w = jnp.exp(-x_w)  # non-empty windows: geometric multiples of W
            cap_i = jnp.minimum(
                jnp.where(rho_b > 0, safe_div(li, rho_b), safe_div(c * bmax, serv_max)),
                safe_div(c * bmax, serv_max),
            )
            w = 0.5 * win + mean_wait_s(rho_b, serv, c, ca2_w, cs2)
        else:
            cap_i = safe_div(c * bmax, serv_max)
            rho_b = jnp.minimum(safe_div(li * serv, b * c), 1.0)
            pw = prob_wait(rho_b, c)
            if _iteration_level(s.stage):
                # every one of the c·B_max slots is a server of one sequence
                rho_max = safe_div(li * serv_max, bmax * c)
                over = mean_wait_s(rho_max, serv_max, c * bmax, ca2[i], 0.0)
                w = pw * 0.5 * op.join_s * f + jnp.minimum(rho_max, 1.0) * over
            else:
                # work-conserving view: per-item service S(b)/b queues like M/D/c; a request
                # also waits for the batch-mates served with it (size-biased batch, Poisson
                # excess: E_sb[b] = b + (b-1)/b)
                s_item = safe_div(serv, b)
                wq = mean_wait_s(safe_div(li * s_item, c), s_item, c, ca2[i], 0.0)
                e_sb = b + safe_div(b - 1.0, b)
                done = wq + s_item * (1.0 + 0.5 * (e_sb - 1.0))
                w = jnp.maximum(done, serv) - serv
        cap[i] = cap_i
        rho[i] = safe_div(li, cap_i)
        wait[i] = w
        lat[i] = w + serv + op.idle_s
        first[i] = w + op.first_output_s * f
        mem_margin[i] = op.capacity_bytes - jnp.maximum(op.used_bytes, top.used_bytes)
        r2 = jnp.minimum(rho[i], 1.0) ** 2
        sq = jnp.sqrt(jnp.maximum(c, 1.0))
        cd2[i] = jnp.maximum(1.0 + (1.0 - r2) * (ca2[i] - 1.0) - safe_div(r2, sq), 0.0)
        for r in p.routes:
            if idx[r.src] == i:
                j = idx[r.dst]
                rate = li * r.fraction
                ca2[j] = ca2[j] + rate * (r.fraction * cd2[i] + 1.0 - r.fraction)
                incoming_rate[j] = incoming_rate[j] + rate

    # --- end-to-end latency and TTFT: backward recursion over the DAG ------------------------
    big_l = [jnp.asarray(0.0)] * n
    big_f = [jnp.asarray(0.0)] * n
    for i in reversed(order):
        s = p.stages[i]
        down_l = jnp.asarray(0.0)
        down_f = jnp.asarray(0.0)
        for r in p.routes:
            if idx[r.src] == i:
                down_l = down_l + r.fraction * big_l[idx[r.dst]]
                down_f = down_f + r.fraction * big_f[idx[r.dst]]
        big_l[i] = lat[i] + down_l
        big_f[i] = first[i] if s.first_token else lat[i] + down_f
    e2e = big_l[order[0]]
    ttft = big_f[order[0]]

    per_req_cap = jnp.stack(
        [safe_div(cap[i], v[i]) + jnp.where(v[i] > 0, 0.0, 1e30) for i in range(n)]
    )
    x = smooth_min_pos(per_req_cap, tau)
    devices = sum((e.count for e in p.engines), jnp.asarray(0.0))
    rho_arr = jnp.stack(rho)
    margin = jnp.stack(mem_margin)
    feasible = jnp.all(rho_arr < 1.0) & jnp.all(margin >= 0)
    slo = p.slo
    meets = (
        feasible
        & ((slo.e2e_s <= 0) | (e2e <= slo.e2e_s))
        & ((slo.ttft_s <= 0) | (ttft <= slo.ttft_s))
    )
    return PipelineResult(
        visits=jnp.stack(v),
        arrival_per_s=jnp.stack(lam_s),
        instances=jnp.stack(inst),
        batch=jnp.stack(bop),
        service_s=jnp.stack([s_op[i].service_s * factor[i] for i in range(n)]),
        wait_s=jnp.stack(wait),
        latency_s=jnp.stack(lat),
        capacity_per_s=jnp.stack(cap),
        utilisation=rho_arr,
        contention=jnp.stack(factor),
        memory_margin_bytes=margin,
        throughput_per_s=x,
        bottleneck=jnp.argmin(per_req_cap),
        e2e_latency_s=e2e,
        ttft_s=ttft,
        devices=devices,
        throughput_per_device=safe_div(x, devices),
        feasible=feasible,
        meets_slo=meets,
    )


# ------------------------------------------------------------------------------------------
# optimisation hooks
# ------------------------------------------------------------------------------------------


class PipelineDesign(eqx.Module):
    """Relaxed design variables of a pipeline (all float leaves, unconstrained):

    - ``share_logits[i]``: device split; on each engine the shares of its stages are the
      softmax of their logits (they sum to 1).
    - ``log_batch[i]``: ``batch_size = 1 + exp(log_batch)`` (largest batch for window and
      continuous batching).
    - ``retrieve_logits[i]``: ``retrieve_weight = sigmoid(logit)`` of KV-retrieval stages
      (ignored elsewhere).
    """

    share_logits: jax.Array
    log_batch: jax.Array
    retrieve_logits: jax.Array


def initial_design(p: Pipeline) -> PipelineDesign:
    """The design that reproduces ``p``'s current shares, batch sizes and retrieve weights."""
    shares = jnp.stack([jnp.asarray(s.share, dtype=float) for s in p.stages])
    bs = jnp.stack([jnp.asarray(s.batching.batch_size, dtype=float) for s in p.stages])
    rw = []
    for s in p.stages:
        w = s.stage.retrieve_weight if isinstance(s.stage, KVRetrieval) else 0.5
        w = jnp.clip(jnp.asarray(w, dtype=float), 1e-6, 1.0 - 1e-6)
        rw.append(jnp.log(w) - jnp.log1p(-w))
    return PipelineDesign(
        share_logits=jnp.log(jnp.maximum(shares, 1e-9)),
        log_batch=jnp.log(jnp.maximum(bs - 1.0, 1e-3)),
        retrieve_logits=jnp.stack(rw),
    )


def apply_design(p: Pipeline, d: PipelineDesign) -> Pipeline:
    """``p`` with the shares, batch sizes and retrieve weights of design ``d``."""
    stages = list(p.stages)
    for e in p.engines:
        members = [i for i, s in enumerate(stages) if s.engine == e.name]
        logits = jnp.stack([d.share_logits[i] for i in members])
        sm = jax.nn.softmax(logits)
        for k, i in enumerate(members):
            stages[i] = eqx.tree_at(lambda s: s.share, stages[i], sm[k])
    for i, s in enumerate(stages):
        s = eqx.tree_at(lambda s: s.batching.batch_size, s, 1.0 + jnp.exp(d.log_batch[i]))
        if isinstance(s.stage, KVRetrieval):
            s = eqx.tree_at(
                lambda s: s.stage.retrieve_weight, s, jax.nn.sigmoid(d.retrieve_logits[i])
            )
        stages[i] = s
    return eqx.tree_at(lambda q: q.stages, p, tuple(stages))


def objective(r: PipelineResult, p: Pipeline, penalty_weight: float = 10.0):
    """Loss to minimise: ``-log(throughput per device)`` plus softplus penalties for the
    e2e and TTFT SLOs at the offered load, for utilisation above 90% and for memory
    over-use."""
    slo = p.slo
    pen = jnp.where(slo.e2e_s > 0, softplus_penalty(r.e2e_latency_s, slo.e2e_s), 0.0)
    pen = pen + jnp.where(slo.ttft_s > 0, softplus_penalty(r.ttft_s, slo.ttft_s), 0.0)
    pen = pen + jnp.sum(softplus_penalty(r.utilisation, 0.9))
    used = jnp.maximum(-r.memory_margin_bytes, 0.0)
    pen = pen + jnp.sum(jnp.log1p(safe_div(used, 1e9)))
    return -safe_log(r.throughput_per_device) + penalty_weight * pen


def design_loss(d: PipelineDesign, p: Pipeline, tau: float = 0.05, penalty_weight=10.0):
    """``objective(evaluate(apply_design(p, d), tau))``: what ``optimize`` differentiates."""
    q = apply_design(p, d)
    return objective(evaluate(q, tau), q, penalty_weight)


def engine_tiers(engine: Engine) -> tuple[KVTier, ...]:
    return tuple(engine.kv_tiers)
