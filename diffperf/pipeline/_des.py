"""A request-level discrete-event simulation of a pipeline (numpy + heapq), to check the
analytical queueing model of :mod:`diffperf.pipeline._pipeline`.

Requests arrive as a Poisson process at the entry stage and follow the routes at random.
Each stage has ``servers`` identical instances and one FCFS queue; service times come from a
table indexed by the batch size (built from the same stage cost functions the analytical
model uses, so the comparison isolates the queueing and batching approximations):

- ``static``: a free instance starts as soon as ``B`` requests wait; it serves exactly ``B``.
- ``window``: every ``W`` seconds the waiting requests (at most ``B_max``; the rest wait for
  the next window) become one batch, queued FCFS for a free instance.
- ``continuous``, run-to-completion: a free instance takes up to ``B_max`` waiting requests.
- ``continuous``, iteration-level (LLM decode): each instance runs iterations of
  ``step[b]`` seconds over its ``b`` active sequences; a sequence leaves after ``n_iter``
  iterations (its first answer token after ``first_iter``); waiting sequences join at the
  next iteration boundary while fewer than ``B_max`` are active.
A request's idle time (tool waits) delays it after service without occupying an instance.
"""

import dataclasses
import heapq
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np

from ._pipeline import Pipeline, PipelineError, _iteration_level, evaluate, topo_order
from ._stages import AgentLoop


@dataclasses.dataclass
class SimStage:
    """One stage of the simulation (see module docstring). ``table[b-1]`` is the service
    time of a batch of ``b`` (run-to-completion) or one iteration at ``b`` active sequences
    (iteration-level)."""

    name: str
    servers: int
    kind: str
    batch: int
    table: np.ndarray
    window_s: float = 0.0
    iteration_level: bool = False
    n_iter: int = 1
    first_iter: int = 1
    idle_s: float = 0.0
    first_token: bool = False


def simulate(
    stages: list[SimStage],
    routes: dict[int, list[tuple[int, float]]],
    entry: int,
    arrival_rate_per_s: float,
    n_requests: int,
    seed: int = 0,
    warmup: float = 0.1,
) -> dict:
    """Run the simulation; returns mean/p50/p90/p99 end-to-end latency and TTFT (seconds),
    per-stage mean latency and busy fraction, over the requests after the warm-up share."""
    rng = np.random.default_rng(seed)
    ns = len(stages)
    arrivals = np.cumsum(rng.exponential(1.0 / arrival_rate_per_s, n_requests))
    t_in = np.zeros(n_requests)
    t_first = np.full(n_requests, np.nan)
    t_out = np.full(n_requests, np.nan)
    stage_t = [[0.0, 0] for _ in range(ns)]  # summed latency, count
    busy = np.zeros(ns)
    ev: list = []
    seq = [0]

    def push(t, kind, *data):
        seq[0] += 1
        heapq.heappush(ev, (t, seq[0], kind, data))

    queue = [deque() for _ in range(ns)]
    ready = [deque() for _ in range(ns)]  # window batches waiting for an instance
    free = [st.servers for st in stages]
    active: list[list[list]] = [[[] for _ in range(st.servers)] for st in stages]
    running = [[False] * st.servers for st in stages]
    tick_on = [False] * ns

    def leave(s, r, t):
        st = stages[s]
        stage_t[s][0] += t - enter[s].pop(r)
        stage_t[s][1] += 1
        push(t + st.idle_s, "next", s, r)

    enter = [dict() for _ in range(ns)]

    def arrive(s, r, t):
        enter[s][r] = t
        st = stages[s]
        queue[s].append(r)
        if st.kind == "window":
            if not tick_on[s]:
                tick_on[s] = True
                push(t + st.window_s - (t % st.window_s), "tick", s)
            return
        try_start(s, t)

    def try_start(s, t):
        st = stages[s]
        if st.iteration_level:
            for k in range(st.servers):
                if not running[s][k] and queue[s]:
                    start_iter(s, k, t)
            return
        while free[s] > 0:
            if st.kind == "static":
                if len(queue[s]) < st.batch:
                    return
                b = [queue[s].popleft() for _ in range(st.batch)]
            elif st.kind == "window":
                if not ready[s]:
                    return
                b = ready[s].popleft()
            else:
                if not queue[s]:
                    return
                b = [queue[s].popleft() for _ in range(min(st.batch, len(queue[s])))]
            free[s] -= 1
            d = float(st.table[len(b) - 1])
            busy[s] += d
            push(t + d, "done", s, b)

    def start_iter(s, k, t):
        st = stages[s]
        act = active[s][k]
        while queue[s] and len(act) < st.batch:
            act.append([queue[s].popleft(), 0])
        if not act:
            running[s][k] = False
            return
        running[s][k] = True
        d = float(st.table[len(act) - 1])
        busy[s] += d
        push(t + d, "iter", s, k)

    for r in range(n_requests):
        t_in[r] = arrivals[r]
        push(arrivals[r], "arrive", entry, r)

    while ev:
        t, _, kind, data = heapq.heappop(ev)
        if kind == "arrive":
            arrive(data[0], data[1], t)
        elif kind == "done":
            s, b = data
            free[s] += 1
            for r in b:
                if stages[s].first_token:
                    t_first[r] = t
                leave(s, r, t)
            try_start(s, t)
        elif kind == "iter":
            s, k = data
            st = stages[s]
            keep = []
            for item in active[s][k]:
                item[1] += 1
                r = item[0]
                if st.first_token and item[1] == st.first_iter:
                    t_first[r] = t
                if item[1] >= st.n_iter:
                    leave(s, r, t)
                else:
                    keep.append(item)
            active[s][k] = keep
            start_iter(s, k, t)
        elif kind == "tick":
            s = data[0]
            st = stages[s]
            if queue[s]:
                b = [queue[s].popleft() for _ in range(min(st.batch, len(queue[s])))]
                ready[s].append(b)
                try_start(s, t)
            if queue[s] or ready[s] or free[s] < st.servers:
                push(t + st.window_s, "tick", s)
            else:
                tick_on[s] = False
        else:  # next
            s, r = data
            nxt = routes.get(s, [])
            u = rng.random()
            acc = 0.0
            dest = None
            for d, frac in nxt:
                acc += frac
                if u < acc:
                    dest = d
                    break
            if dest is None:
                t_out[r] = t
                if np.isnan(t_first[r]):
                    t_first[r] = t
            else:
                arrive(dest, r, t)

    keep = np.arange(n_requests) >= int(warmup * n_requests)
    e2e = (t_out - t_in)[keep]
    ttft = (t_first - t_in)[keep]
    horizon = float(np.nanmax(t_out))
    return {
        "e2e_mean_s": float(np.mean(e2e)),
        "e2e_p50_s": float(np.percentile(e2e, 50)),
        "e2e_p90_s": float(np.percentile(e2e, 90)),
        "e2e_p99_s": float(np.percentile(e2e, 99)),
        "ttft_mean_s": float(np.mean(ttft)),
        "stage_latency_s": [a / max(c, 1) for a, c in stage_t],
        "stage_busy": [float(b / (st.servers * horizon)) for b, st in zip(busy, stages)],
        "throughput_per_s": float(n_requests / horizon),
    }


def sim_stages(p: Pipeline, result=None) -> tuple[list[SimStage], dict, int]:
    """SimStages of a concrete pipeline: service tables from the stages' cost functions at
    every integer batch ``1..B`` on one instance (times the contention factor the analytical
    model found at the operating point; pass its ``result`` to skip re-evaluating ``p``).
    Instances and batch sizes must be integers."""
    r = evaluate(p) if result is None else result
    out = []
    for i, s in enumerate(p.stages):
        c = float(np.asarray(r.instances[i]))
        b = float(np.asarray(s.batching.batch_size))
        for what, val in (("instances", c), ("batch_size", b)):
            if abs(val - round(val)) > 1e-6 or round(val) < 1:
                raise PipelineError(
                    f"stage {s.name!r}: {what} = {val:g} must be a positive integer to simulate"
                )
        c, b = int(round(c)), int(round(b))
        e = p.engine(s.engine)
        bs = jnp.arange(1, b + 1, dtype=float)
        cost = jax.vmap(lambda x, s=s, e=e: s.stage.cost(e.hw, e.kv_tiers, x, 0.0))(bs)
        f = float(np.asarray(r.contention[i]))
        it = _iteration_level(s.stage)
        if it and isinstance(s.stage, AgentLoop):
            raise PipelineError(f"stage {s.name!r}: agent loops are not simulated")
        if it:
            n_iter = float(np.asarray(s.stage.thinking_tokens + s.stage.output_tokens))
            first = float(np.asarray(s.stage.thinking_tokens)) + 1.0
            table = np.asarray(cost.join_s) * f
        else:
            n_iter, first = 1.0, 1.0
            table = np.asarray(cost.service_s) * f
        idle = float(np.asarray(cost.idle_s[0]))
        out.append(
            SimStage(
                s.name,
                c,
                s.batching.kind,
                b,
                table,
                float(np.asarray(s.batching.window_s)),
                it,
                int(round(n_iter)),
                int(round(first)),
                idle,
                s.first_token,
            )
        )
    idx = {s.name: i for i, s in enumerate(p.stages)}
    routes: dict[int, list[tuple[int, float]]] = {}
    for rt in p.routes:
        routes.setdefault(idx[rt.src], []).append((idx[rt.dst], float(np.asarray(rt.fraction))))
    return out, routes, topo_order(p)[0]


def simulate_pipeline(p: Pipeline, n_requests: int = 20000, seed: int = 0, rate=None) -> dict:
    """Simulate ``p`` at its arrival rate (or ``rate``) with :func:`simulate`."""
    stages, routes, entry = sim_stages(p)
    lam = float(np.asarray(p.arrival_rate_per_s)) if rate is None else float(rate)
    return simulate(stages, routes, entry, lam, n_requests, seed)
