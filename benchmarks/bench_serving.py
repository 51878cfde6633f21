"""Serving-scheme speed: full scheme evaluations/s (vmapped) and a grid compare's wall time.

Run: ``python benchmarks/bench_serving.py --json``. Prints one JSON object:

- ``serving_evals_per_s.<scheme>``: DeepSeek-V3 (fp8 weights) full serving evaluations
  (``evaluate`` → Metrics: fixed points/root searches, queueing, memory) per second, jitted
  and vmapped over ``--points`` distinct deployments drawn (with replacement) from the
  scheme's exact grid: aggregated and disaggregated on 64 x H800, AFD on 72 x GB200
  (NVL72), chat workload, each design offered its own saturating concurrency. Steady state
  (second call; the first is reported as ``compile_s``), chunks of ``diffperf.search._grid.CHUNK``.
- ``compare_wall_s``: ``grid_search`` over every scheme of DeepSeek-V3 on
  ``--compare-devices`` x H800 (``compare_plans`` designs), second call (after compilation);
  ``compare_first_s`` is the first call including compilation.
"""

import argparse
import json
import os
import time

import numpy as np

from diffperf.deploy import load_workload
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.search import GridTable, enumerate_grid, evaluate_grid, grid_search


SETUPS = {
    "aggregated": ("h800", 64),
    "disaggregated": ("h800", 64),
    "afd": ("gb200", 72),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--schemes", default="aggregated,disaggregated,afd")
    ap.add_argument("--compare-devices", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    model = load_model("deepseek-v3")
    w = load_workload("chat")
    rng = np.random.default_rng(0)
    out: dict = {
        "model": model.name,
        "workload": w.name,
        "points": args.points,
        "cpu_count": os.cpu_count(),
        "serving_evals_per_s": {},
        "compile_s": {},
        "setup": {},
    }
    for scheme in args.schemes.split(","):
        hw_name, n = SETUPS[scheme]
        hw = load_hardware(hw_name)
        grid = enumerate_grid(hw, model, n, scheme)
        idx = rng.integers(0, grid.size, size=args.points)
        cols = {k: v[idx] for k, v in grid.columns.items()}
        table = GridTable(scheme, cols, grid.dtypes, args.points)
        t0 = time.perf_counter()
        evaluate_grid(hw, model, table, w)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = evaluate_grid(hw, model, table, w)
        wall = time.perf_counter() - t0
        assert np.all(np.isfinite(m.tpot_s))
        out["serving_evals_per_s"][scheme] = args.points / wall
        out["compile_s"][scheme] = max(first - wall, 0.0)
        out["setup"][scheme] = f"{n} x {hw_name}, grid of {grid.size} designs"

    hw = load_hardware("h800")
    t0 = time.perf_counter()
    grid_search(hw, model, args.compare_devices, w)
    out["compare_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = grid_search(hw, model, args.compare_devices, w)
    out["compare_wall_s"] = time.perf_counter() - t0
    out["compare_plans"] = int(sum(r.table.size for r in res.values()))
    out["compare_setup"] = f"deepseek-v3 on {args.compare_devices} x h800, chat, all schemes"
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
