"""Gradient search vs the exact grid: wall time and answer quality. Prints one JSON object.

Run: ``python benchmarks/bench_search.py --json`` (x64, as in the tests).

- ``grid_vs_optimize``: DeepSeek-V3 (fp8) on ``--devices`` x H800, chat workload, the
  ``--scheme`` grid with the default :class:`GridSpace` (``space_size`` designs):
  ``grid_first_s`` / ``grid_s`` (first call including compilation / second call) and
  ``optimize_first_s`` / ``optimize_s`` (same), the ratios ``optimize_s / grid_s`` after
  compilation and ``optimize_first_s / grid_first_s`` including it, the grid optimum and the
  optimiser's rounded answer (tokens/s/device) and their ratio, and how many designs the
  optimiser evaluated exactly. ``--fine`` uses ``FINE_SPACE`` (finer batch ladders).
- ``hardware_search``: DeepSeek-V3.2 on ``--hw-devices`` devices, aggregated, tokens per
  dollar, with ``flops``, ``hbm_bandwidth``, ``hbm_capacity`` and ``scaleup_bandwidth``
  searched at ``--resolution`` levels each (``hardware_points``) times the deployment table
  (``deployments``): ``space_size`` points, ``first_s`` (including compilation) and ``s``
  (second call, another seed), the answer and whether it meets the SLOs; ``grid_sample``:
  ``--sample-points`` uniformly drawn points of that space evaluated exactly as a grid would
  (first call with compilation, then ``s``), the per-point cost, ``grid_estimate_s`` (what
  the whole grid would take at that rate) and the optimiser's answers over the sample's best.
"""

import argparse
import json
import os
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from diffperf.deploy import load_workload  # noqa: E402
from diffperf.hardware import load_hardware  # noqa: E402
from diffperf.hardware._cost_model import default_cost_model  # noqa: E402
from diffperf.model import load_model  # noqa: E402
from diffperf.search import GridSpace, grid_search  # noqa: E402
from diffperf.search._objective import make_objective  # noqa: E402
from diffperf.search._optimize import OptimizeSettings, _exact, optimize_scheme  # noqa: E402
from diffperf.search._relax import HardwareSpace  # noqa: E402


# ``--fine``: batch limits in steps of sqrt(2) instead of 2 and twice the prefill batch
# choices, a space ~3.6x larger with the same models (how the ratio scales with space size)
FINE_SPACE = GridSpace(
    batch_ladder=tuple(sorted({round(2 ** (i / 2)) for i in range(21)})),
    prefill_batch_ladder=(1, 2, 3, 4, 6, 8, 12, 16),
)


def grid_vs_optimize(scheme: str, n: int, starts: int, steps: int, fine: bool = False) -> dict:
    model = load_model("deepseek-v3")
    hw = load_hardware("h800")
    w = load_workload("chat")
    space = FINE_SPACE if fine else GridSpace()
    out: dict = {"model": model.name, "hardware": hw.name, "devices": n, "scheme": scheme}
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        g = grid_search(hw, model, n, w, [scheme], space)[scheme]
        times.append(time.perf_counter() - t0)
    out["space_size"] = g.table.size
    out["grid_first_s"], out["grid_s"] = times
    best = float(g.metrics.throughput_tok_s_per_device[g.best]) if g.best is not None else None
    out["grid_best_tok_s_per_device"] = best
    times, res = [], []
    for seed in (0, 1):
        s = OptimizeSettings(starts=starts, steps=steps, seed=seed)
        t0 = time.perf_counter()
        r = optimize_scheme(hw, model, n, w, scheme, space, settings=s)
        times.append(time.perf_counter() - t0)
        res.append(r)
    out["optimize_first_s"], out["optimize_s"] = times
    out["optimize_tok_s_per_device"] = [r.objective for r in res]
    out["optimize_meets_slo"] = [r.meets_slo for r in res]
    out["optimize_over_grid_best"] = [r.objective / best if best else None for r in res]
    out["evaluated_exactly"] = [r.evaluated for r in res]
    out["ratio_after_compile"] = out["optimize_s"] / out["grid_s"]
    out["ratio_including_compile"] = out["optimize_first_s"] / out["grid_first_s"]
    out["settings"] = {"starts": starts, "steps": steps, "fine_space": fine}
    return out


def hardware_search(
    n: int, resolution: int, starts: int, steps: int, sample_points: int = 8**6
) -> dict:
    model = load_model("deepseek-v3.2")
    hw = load_hardware("h100-sxm")
    w = load_workload("chat")
    space = GridSpace(batch_ladder=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
    params = ("flops", "hbm_bandwidth", "hbm_capacity", "scaleup_bandwidth")
    hs = HardwareSpace.make(params, None, resolution)
    obj = make_objective("tokens-per-dollar")
    times, res = [], []
    for seed in (0, 1):
        s = OptimizeSettings(starts=starts, steps=steps, seed=seed)
        t0 = time.perf_counter()
        r = optimize_scheme(hw, model, n, w, "aggregated", space, obj, hs, s)
        times.append(time.perf_counter() - t0)
        res.append(r)
    r = res[0]
    sample = _sampled_grid(hw, model, w, r.space, hs, obj, space, sample_points)
    return {
        "model": model.name,
        "base_hardware": hw.name,
        "devices": n,
        "scheme": "aggregated",
        "objective": obj.kind,
        "params": list(params),
        "resolution": resolution,
        "hardware_points": hs.size,
        "deployments": r.space.table.size,
        "space_size": r.space_size,
        "first_s": times[0],
        "s": times[1],
        "tok_per_usd": [x.objective for x in res],
        "meets_slo": [x.meets_slo for x in res],
        "hardware": [x.hardware for x in res],
        "deployment": r.deployment(),
        "evaluated_exactly": [x.evaluated for x in res],
        "settings": {"starts": starts, "steps": steps},
        "grid_sample": {
            **sample,
            # what the exact grid of the whole space would take at the sample's rate
            "grid_estimate_s": sample["s_per_point"] * r.space_size,
            "optimize_over_sample_best": [x.objective / sample["best"] for x in res],
        },
    }


def _sampled_grid(hw, model, w, rs, hs, obj, space, points: int) -> dict:
    """Exact evaluation of ``points`` uniformly drawn (deployment, hardware) pairs of the
    space, as the grid would evaluate them (one vectorised call; first call includes
    compilation): the per-point cost that prices the full grid, and the sample's best."""
    rng = np.random.default_rng(0)
    rows = rng.integers(0, rs.table.size, points)
    hidx = np.stack([rng.integers(0, len(lev), points) for lev in hs.levels], axis=1)
    saturate = space.load == "saturate" and w.load_mode == "closed"
    ctx = (hw, model, w, rs, hs, obj, default_cost_model(), saturate)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        m, val, _ = _exact(ctx, rows, hidx)
        times.append(time.perf_counter() - t0)
    feas = np.asarray(m.feasible) > 0.5
    best = float(np.max(np.where(feas & np.isfinite(val), val, -np.inf)))
    return {
        "points": points,
        "first_s": times[0],
        "s": times[1],
        "s_per_point": times[1] / points,
        "feasible_fraction": float(feas.mean()),
        "best": best,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scheme", default="disaggregated")
    ap.add_argument("--devices", type=int, default=64)
    ap.add_argument("--hw-devices", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--starts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", default="", help="comma list: grid, hardware")
    ap.add_argument("--sample-points", type=int, default=8**6, help="grid sample (hardware)")
    ap.add_argument("--fine", action="store_true", help="the finer grid space (FINE_SPACE)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    out: dict = {"cpu_count": os.cpu_count()}
    if "grid" not in skip:
        out["grid_vs_optimize"] = grid_vs_optimize(
            args.scheme, args.devices, args.starts, args.steps, args.fine
        )
    if "hardware" not in skip:
        out["hardware_search"] = hardware_search(
            args.hw_devices, args.resolution, args.starts, args.steps, args.sample_points
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
