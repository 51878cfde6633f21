"""Core speed benchmark: vmapped decode-step evaluations, gradient cost, compile time.

Run: ``python benchmarks/bench_core.py --json``. Prints one JSON object:
- ``decode_step_evals_per_s``: DeepSeek-V3 decode step (batch 64 per replica, 4k context) on a
  32-GPU plan (attention DP 32, EP 32, fp8_block weights) on H100-SXM, vmapped over N points
  that vary every Accelerator/Fabric leaf we sweep in practice (peaks, HBM, fabric), jitted.
- ``grad_over_forward``: time of a vmapped gradient of the step latency w.r.t. *all* hardware
  leaves divided by the vmapped forward time of the same function (hardware passed as an
  argument, as the gradient needs) over the same points.
- ``compile_s``: first-call time (trace + XLA compile) of the vmapped forward.
"""

import argparse
import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.stages import decode_batch, iteration, make_plan


def _perturbed(hw, keys, scales):
    """hw with each leaf in ``keys`` multiplied by the corresponding column of ``scales``."""
    return eqx.tree_at(
        lambda h: [k(h) for k in keys], hw, [k(hw) * s for k, s in zip(keys, scales)]
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    hw = load_hardware("h100-sxm")
    model = load_model("deepseek-v3")
    plan = make_plan(model, tp=1, dp=32, ep=32, dtype="fp8_block", kv_dtype="fp8")
    batch = decode_batch(64.0 * 32, 4096.0)
    keys = [
        lambda h: h.accel.peak_bf16_flop_per_s,
        lambda h: h.accel.peak_fp8_flop_per_s,
        lambda h: h.accel.hbm.bw_bytes_per_s,
        lambda h: h.accel.hbm.capacity_bytes,
        lambda h: h.fabric.scaleup_bw_bytes_per_s,
        lambda h: h.fabric.scaleout_bw_bytes_per_s,
    ]
    rng = np.random.default_rng(0)
    scales = jnp.asarray(rng.uniform(0.5, 2.0, size=(args.points, len(keys))), dtype=jnp.float32)

    def latency(s):
        h = _perturbed(hw, keys, [s[i] for i in range(len(keys))])
        return iteration(h, model, plan, batch).latency_s

    fwd = jax.jit(jax.vmap(latency))
    t0 = time.perf_counter()
    fwd(scales).block_until_ready()
    compile_s = time.perf_counter() - t0

    def timeit(f, *a):
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(f(*a))
            best = min(best, time.perf_counter() - t)
        return best

    t_fwd = timeit(fwd, scales)

    # Gradient w.r.t. every inexact leaf of the Hardware pytree (all of them), per point.
    # The fair baseline is the same function with the hardware passed in as an argument (the
    # forward above closes over it, so XLA constant-folds every leaf it does not sweep).
    params, static = eqx.partition(hw, eqx.is_inexact_array)

    def lat_hw(p, s):
        h = eqx.combine(p, static)
        h = _perturbed(h, keys, [s[i] for i in range(len(keys))])
        return iteration(h, model, plan, batch).latency_s

    fwd_args = jax.jit(jax.vmap(lat_hw, in_axes=(None, 0)))
    jax.block_until_ready(fwd_args(params, scales))
    t_fwd_args = timeit(fwd_args, params, scales)
    grad = jax.jit(jax.vmap(jax.grad(lat_hw), in_axes=(None, 0)))
    jax.block_until_ready(grad(params, scales))
    t_grad = timeit(grad, params, scales)
    n_leaves = len(jax.tree_util.tree_leaves(params))
    out = {
        "points": args.points,
        "decode_step_evals_per_s": args.points / t_fwd,
        "grad_over_forward": t_grad / t_fwd_args,
        "forward_hw_as_argument_s": t_fwd_args,
        "grad_leaves": n_leaves,
        "compile_s": compile_s,
        "forward_s": t_fwd,
        "grad_s": t_grad,
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
