"""Sweep speed: a 10^6-point design space through ``diffperf.search`` sweeps.

Run: ``python benchmarks/bench_sweep.py --json``. Prints one JSON object:

- ``points``: 100 HBM-bandwidth factors × 100 FLOP/s factors × 100 closed-loop concurrencies
  (``--points`` changes the per-axis count to its cube root) of Llama-3.1-8B served by the
  aggregated scheme (continuous batching with chunked prefill, TP1, max batch 256, chat
  workload) on H100-SXM: every point is a full serving evaluation (fixed point, queueing,
  memory) to TTFT, TPOT, tokens/s/device, tokens/s/user and the feasibility flag.
- ``eval_wall_s``: the whole sweep without output (chunks of ``--chunk`` points, each sharded
  over all local devices), second call; ``first_call_wall_s`` the first call (trace and
  compile included), ``compile_s`` the difference.
- ``csv_wall_s``: the same sweep streaming every row to a CSV file (10^6 rows, 8 columns).
- ``points_per_s``: points / ``eval_wall_s``; target: 10^6 points in <= 30 s.
"""

import argparse
import json
import os
import tempfile
import time

import jax

from diffperf.search._sweep import load_space, run_sweep


def space_dict(n_axis: int, chunk: int) -> dict:
    return {
        "scheme": "aggregated",
        "model": "llama-3.1-8b",
        "hardware": "h100-sxm",
        "workload": "chat",
        "outputs": ["ttft_s", "tpot_s", "throughput_tok_s_per_device", "throughput_tok_s_per_user"],
        "chunk": chunk,
        "deployment": {"tp": 1, "max_batch": 256},
        "axes": {
            "scale.hbm_bw": {"logspace": [0.25, 4.0], "num": n_axis},
            "scale.flops": {"logspace": [0.25, 4.0], "num": n_axis},
            "workload.concurrency": {"logspace": [1.0, 512.0], "num": n_axis},
        },
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=1 << 17)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n_axis = max(2, round(args.points ** (1 / 3)))
    space = load_space(space_dict(n_axis, args.chunk))

    t0 = time.perf_counter()
    run_sweep(space)  # first call: traces and compiles the chunk function
    first_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = run_sweep(space)
    eval_wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run_sweep(space, os.path.join(d, "sweep.csv"))
        csv_wall = time.perf_counter() - t0
        csv_bytes = os.path.getsize(os.path.join(d, "sweep.csv"))
    out = {
        "points": r["points"],
        "shape": r["shape"],
        "chunk": r["chunk"],
        "devices": r["devices"],
        "first_call_wall_s": first_wall,
        "compile_s": first_wall - eval_wall,
        "eval_wall_s": eval_wall,
        "points_per_s": r["points"] / eval_wall,
        "csv_wall_s": csv_wall,
        "csv_bytes": csv_bytes,
        "feasible": r["feasible"],
        "target_wall_s": 30.0,
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
