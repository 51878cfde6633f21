"""Calibration speed benchmark: fitting a device from ~10^4 measured rows, and profile --quick.

Run: ``python benchmarks/bench_calibrate.py [--device h100-sxm] [--skip-profile]``. Prints one
JSON object:

- ``calibrate_rows``: rows of the device in ``calibration_data/kernels/`` (every op family).
- ``calibrate_wall_s``: wall time of the whole fit (all families jointly: trace, compile, Adam
  steps, curvature uncertainty, prediction of every row for the error tables), as
  ``diffperf calibrate`` runs it. Target: <= 60 s on 2 idle cores.
- ``calibrate_cpu_s``: CPU time of this process during the fit (user + system). On a shared
  machine wall time includes waiting for other processes; CPU time / cores is the wall time
  an idle machine would need at best.
- ``calibrate_phases_s``: the optimisation and the uncertainty parts of the fit.
- ``load_average_1min``: the machine's load when the benchmark ran (2 = both cores busy).
- ``profile_quick_wall_s``, ``profile_quick_rows``: ``diffperf profile --quick`` (target
  <= 60 s on 2 cores).
- with ``--live-holdout N``: ``live_holdout``, N runs of profile -> calibrate -> predict on
  this machine (``CPU_HOLDOUT_PLAN``: fp32 GEMMs in six (n, k) shape groups; the
  ``epyc-genoa-2vcpu`` preset fitted on 4 groups, the 2 unseen groups predicted): per run the
  held-out median |relative error| after and before calibration, and the training one.
  Target: held-out <= 0.15 on an idle machine. Only meaningful on a CPU JAX backend.
"""

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from diffperf.calibrate import concat_tables, read_kernel_csv, select_rows
from diffperf.calibrate._fit import FitConfig, fit_efficiency
from diffperf.hardware import load_hardware


ROOT = Path(__file__).resolve().parent.parent
TABLES = ("gemm", "attention_prefill", "attention_decode", "mla", "moe", "collectives")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _live_holdout(runs: int) -> dict:
    from diffperf.calibrate import error_table, predict_table
    from diffperf.calibrate._profile import CPU_HOLDOUT_PLAN, profile_device

    def median_err(hw, cols, mask):
        sub = select_rows(cols, mask)
        (row,) = error_table(sub, predict_table(hw, sub))
        return row["median_abs_rel_err"]

    prior = load_hardware("epyc-genoa-2vcpu")
    per_run = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "live.csv"
            profile_device(path, plan=CPU_HOLDOUT_PLAN, device_name="local", ops=("gemm",))
            cols = read_kernel_csv(path)
        res = fit_efficiency(prior, cols, FitConfig(steps=300, holdout=0.34, seed=0))
        held = ~res.train_mask
        per_run.append(
            {
                "holdout_median_abs_rel_err": median_err(res.hw, cols, held),
                "holdout_uncalibrated": median_err(prior, cols, held),
                "train_median_abs_rel_err": median_err(res.hw, cols, res.train_mask),
                "load_average_1min": os.getloadavg()[0],
            }
        )
    held = [r["holdout_median_abs_rel_err"] for r in per_run]
    return {"runs": per_run, "holdout_min": min(held), "holdout_max": max(held)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="h100-sxm")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--live-holdout", type=int, default=0, metavar="N")
    args = ap.parse_args()
    if args.live_holdout < 0:
        ap.error(f"--live-holdout = {args.live_holdout} must be >= 0 (runs)")
    out: dict = {"load_average_1min": os.getloadavg()[0], "cores": os.cpu_count()}

    data = ROOT / "calibration_data" / "kernels"
    cols = concat_tables([read_kernel_csv(data / f"{t}.csv") for t in (*TABLES, "moe_alltoall")])
    cols = select_rows(cols, cols["device"] == args.device)
    hw = load_hardware(args.device)
    c0, t0 = _cpu_s(), time.perf_counter()
    res = fit_efficiency(hw, cols, FitConfig(steps=args.steps))
    out.update(
        calibrate_device=args.device,
        calibrate_rows=int(len(cols["op"])),
        calibrate_steps=args.steps,
        calibrate_wall_s=time.perf_counter() - t0,
        calibrate_cpu_s=_cpu_s() - c0,
        calibrate_phases_s=res.timings_s,
        calibrate_worst_group_median_abs_rel_err=float(
            np.max([r["median_abs_rel_err"] for r in res.train_errors])
        ),
    )
    if not args.skip_profile:
        from diffperf.calibrate._profile import profile_device

        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            r = profile_device(Path(d) / "quick.csv", quick=True)
            out.update(profile_quick_wall_s=time.perf_counter() - t0, profile_quick_rows=r["rows"])
    if args.live_holdout:
        out["live_holdout"] = _live_holdout(args.live_holdout)
    out["load_average_1min_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
