"""Pipeline speed: evaluations/s of a 6-stage RAG + reasoning pipeline under jit + vmap.

Run: ``python benchmarks/bench_pipeline.py [--points N] [--config NAME]``. Prints one JSON
object:

- ``evals_per_s``: full pipeline evaluations (every stage's cost at its operating and largest
  batch, batching/queueing, QNA variability, contention, bottleneck throughput, e2e latency and
  TTFT) per second, jitted and vmapped over ``--points`` distinct designs (arrival rate, device
  split and batch sizes drawn at random), steady state (second call, ``block_until_ready``);
  target >= 1e5 on 2 CPU cores.
- ``grad_evals_per_s``: gradients of the SLO-penalised design loss per second (vmapped).
- ``compile_s``: first call (trace + XLA compile).
- ``evals_per_cpu_s``: the same count over the process CPU time of the timed call, with the
  1-minute load average, for machines shared with other jobs.
"""

import argparse
import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def main():
    jax.config.update("jax_enable_x64", True)
    from diffperf.pipeline import design_loss, evaluate, initial_design, load_pipeline

    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--config", default="rag-reasoning")
    ap.add_argument("--grad-points", type=int, default=10_000)
    args = ap.parse_args()

    p = load_pipeline(args.config)
    n_st = len(p.stages)
    rng = np.random.default_rng(0)
    lam0 = float(p.arrival_rate_per_s)
    rates = jnp.asarray(rng.uniform(0.2, 1.2, args.points) * lam0)
    scale = jnp.asarray(rng.uniform(0.7, 1.3, (args.points, n_st)))
    bscale = jnp.asarray(rng.uniform(0.5, 1.0, (args.points, n_st)))

    def one(rate, sh, bs):
        stages = tuple(
            eqx.tree_at(
                lambda s: (s.share, s.batching.batch_size),
                s,
                (s.share * sh[i], jnp.maximum(s.batching.batch_size * bs[i], 1.0)),
            )
            for i, s in enumerate(p.stages)
        )
        q = eqx.tree_at(lambda q: (q.stages, q.arrival_rate_per_s), p, (stages, rate))
        r = evaluate(q)
        return r.throughput_per_s, r.e2e_latency_s, r.ttft_s

    f = jax.jit(jax.vmap(one))
    t = time.perf_counter()
    jax.block_until_ready(f(rates, scale, bscale))
    compile_s = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(f(rates, scale, bscale))
    dt, cpu_s = time.perf_counter() - t, time.process_time() - c
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in out)

    d0 = initial_design(p)
    g_pts = min(args.grad_points, args.points)
    logits = d0.share_logits + jnp.asarray(rng.normal(0, 0.2, (g_pts, n_st)))

    def gone(sl):
        d = eqx.tree_at(lambda d: d.share_logits, d0, sl)
        return jax.grad(lambda d: design_loss(d, p, 0.05))(d).share_logits

    g = jax.jit(jax.vmap(gone))
    t = time.perf_counter()
    jax.block_until_ready(g(logits))
    gcompile = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(g(logits))
    gdt = time.perf_counter() - t
    print(
        json.dumps(
            {
                "config": args.config,
                "stages": n_st,
                "points": args.points,
                "cpu_count": os.cpu_count(),
                "evals_per_s": args.points / dt,
                # CPU time of this process over the timed call: on a machine shared with
                # other jobs, cpu_count x evals_per_cpu_s estimates the idle-machine rate
                "evals_per_cpu_s": args.points / cpu_s,
                "load_average_1min": os.getloadavg()[0],
                "compile_s": compile_s,
                "grad_points": g_pts,
                "grad_evals_per_s": g_pts / gdt,
                "grad_compile_s": gcompile,
                "target_evals_per_s": 1e5,
                "meets_target": args.points / dt >= 1e5,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
