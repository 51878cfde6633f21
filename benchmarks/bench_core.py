"""Core speed benchmark: vmapped decode-step evaluations, gradient cost, compile time.

Run: ``python benchmarks/bench_core.py --json``. Prints one JSON object:

- ``decode_step_evals_per_s``: DeepSeek-V3 decode steps on a 32-GPU plan (attention DP 32,
  EP 32, fp8_block weights, fp8 KV) on H100-SXM, jitted and vmapped over ``--points``
  distinct design points: every one of the Hardware pytree's float leaves (peaks, memory,
  fabric, all efficiency parameters) is scaled by its own random factor in [0.8, 1.25] per
  point, and so are the batch (around 64 sequences per GPU) and the context (around 4k).
- ``grad_over_forward``: a full gradient of the step latency w.r.t. all Hardware leaves at
  one design point divided by one forward evaluation at that point (both jitted, hardware
  passed as an argument, mean over repeated calls) — the cost of a sensitivity analysis or an
  optimiser step relative to an evaluation.
- ``grad_over_forward_compute``: the same at one point with the leaves raveled into one array
  (no per-leaf call overhead): the ratio of the compiled computations themselves.
- ``grad_over_forward_vmapped``: the same ratio per point when gradients for all ``--points``
  distinct points are taken in one vmapped call (see README: XLA's CPU backend splits the
  batched backward pass into hundreds of loop fusions, so this ratio is much higher).
- ``compile_s``: first call (trace + XLA compile) of the vmapped forward.
"""

import argparse
import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.stages import decode_batch, iteration, make_plan


def _best(f, *args, repeats=3, inner=1):
    jax.block_until_ready(f(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            r = f(*args)
        jax.block_until_ready(r)
        best = min(best, (time.perf_counter() - t) / inner)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.points

    hw = load_hardware("h100-sxm")
    model = load_model("deepseek-v3")
    plan = make_plan(model, tp=1, dp=32, ep=32, dtype="fp8_block", kv_dtype="fp8")
    params, static = eqx.partition(hw, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(0)

    def jitter(x):
        return jnp.asarray(np.asarray(x) * rng.uniform(0.8, 1.25, size=(n,)), dtype=jnp.float32)

    batched = jax.tree_util.tree_unflatten(treedef, [jitter(leaf) for leaf in leaves])
    seqs = jitter(64.0 * 32)
    ctx = jitter(4096.0)

    def latency(p, b, c):
        return iteration(eqx.combine(p, static), model, plan, decode_batch(b, c)).latency_s

    fwd = jax.jit(jax.vmap(latency))
    t0 = time.perf_counter()
    jax.block_until_ready(fwd(batched, seqs, ctx))
    compile_s = time.perf_counter() - t0
    t_fwd = _best(fwd, batched, seqs, ctx, repeats=args.repeats)

    # one design point: forward vs full gradient w.r.t. every Hardware leaf
    one = jax.tree_util.tree_map(lambda x: x[0], batched)
    f1 = jax.jit(latency)
    g1 = jax.jit(jax.grad(latency))
    t_f1 = _best(f1, one, seqs[0], ctx[0], repeats=args.repeats, inner=200)
    t_g1 = _best(g1, one, seqs[0], ctx[0], repeats=args.repeats, inner=200)

    # the same, with the 91 leaves raveled into one array: removes the per-leaf call overhead
    # of a pytree argument, leaving the compiled computation itself
    flat, unravel = ravel_pytree(one)
    f1f = jax.jit(lambda x: latency(unravel(x), seqs[0], ctx[0]))
    g1f = jax.jit(jax.grad(lambda x: latency(unravel(x), seqs[0], ctx[0])))
    t_f1f = _best(f1f, flat, repeats=args.repeats, inner=200)
    t_g1f = _best(g1f, flat, repeats=args.repeats, inner=200)

    gv = jax.jit(jax.vmap(jax.grad(latency)))
    t_gv = _best(gv, batched, seqs, ctx, repeats=args.repeats)

    out = {
        "points": n,
        "decode_step_evals_per_s": n / t_fwd,
        "grad_over_forward": t_g1 / t_f1,
        "grad_over_forward_compute": t_g1f / t_f1f,
        "grad_over_forward_vmapped": t_gv / t_fwd,
        "grad_leaves": len(leaves),
        "compile_s": compile_s,
        "vmapped_forward_s": t_fwd,
        "vmapped_grad_s": t_gv,
        "single_forward_s": t_f1,
        "single_grad_s": t_g1,
        "single_forward_flat_s": t_f1f,
        "single_grad_flat_s": t_g1f,
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_version": jax.__version__,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
