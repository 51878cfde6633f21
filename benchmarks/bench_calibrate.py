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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="h100-sxm")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--skip-profile", action="store_true")
    args = ap.parse_args()
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
    out["load_average_1min_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
