"""Co-design of HBM bandwidth vs FLOP/s for DeepSeek-V3.2 decode-heavy serving.

Run: ``python -m experiments.codesign_hbm_flops [--quick]``. Writes
``experiments/out/codesign_hbm_flops.md``, ``codesign_hbm_flops.json`` and two heatmaps
``codesign_hbm_flops_tok_per_device.png`` / ``codesign_hbm_flops_tok_per_usd.png`` (``--quick``:
``codesign_hbm_flops_quick*``).

Question: on ``N`` devices of an H100-class platform (the base preset's fabric, HBM capacity,
efficiencies), which dense BF16 peak and which HBM bandwidth serve DeepSeek-V3.2 best under
the SLOs, per device and per dollar? Price and power of each hypothetical device come from
the parametric cost model (:mod:`diffperf.hardware._cost_model`) anchored at the base preset.

Method: the exact answer on a ``levels x levels`` grid of (FLOP/s, HBM bandwidth), log-spaced
between the bounds, each cell the best feasible aggregated deployment of the exact grid table
(every valid TP/DP/EP plan and batch limit on ``N`` devices; chunked prefill, decode-heavy
workload: ISL 1024, OSL 2048, TPOT SLO 50 ms p90, TTFT 5 s p90), evaluated in one vectorised
call. Then the gradient optimiser (:func:`diffperf.search._optimize.optimize_scheme`) searches
the same hardware x deployment space for the best tokens per dollar; its multi-start paths
(in the two hardware coordinates) and its rounded answer are drawn on the heatmap, and the
Markdown table compares its answer with the exact optimum of the same space.
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
from diffperf.search import GridSpace  # noqa: E402
from diffperf.search._objective import make_objective  # noqa: E402
from diffperf.search._optimize import OptimizeSettings, _exact, optimize_scheme  # noqa: E402
from diffperf.search._relax import HardwareSpace  # noqa: E402


OUT = os.path.join(os.path.dirname(__file__), "out")


def _best_per_cell(m, val, rows, hidx, shape):
    """Best feasible value per hardware cell (NaN where none is feasible)."""
    best = np.full(shape, np.nan)
    arg = np.full(shape, -1)
    feas = np.asarray(m.feasible) > 0.5
    for k in np.flatnonzero(feas):
        i, j = hidx[k]
        if np.isnan(best[i, j]) or val[k] > best[i, j]:
            best[i, j], arg[i, j] = val[k], k
    return best, arg


def _heatmap(path, z, fl, bw, title, label, paths=None, answer=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.5))
    x, y = fl / 1e12, bw / 1e12
    pc = ax.pcolormesh(x, y, z.T, shading="nearest", cmap="viridis")
    fig.colorbar(pc, ax=ax, label=label)
    if paths is not None:
        for p in paths:
            ax.plot(p[:, 0] / 1e12, p[:, 1] / 1e12, "-", color="white", lw=0.8, alpha=0.7)
            ax.plot(p[0, 0] / 1e12, p[0, 1] / 1e12, "o", color="white", ms=3)
    if answer is not None:
        ax.plot(answer[0] / 1e12, answer[1] / 1e12, "*", color="red", ms=16, label="optimiser")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dense BF16 peak (TFLOP/s)")
    ax.set_ylabel("HBM bandwidth (TB/s)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--hardware", default="h100-sxm")
    args = ap.parse_args()
    levels = 6 if args.quick else 12
    tag = "codesign_hbm_flops" + ("_quick" if args.quick else "")
    os.makedirs(OUT, exist_ok=True)

    model = load_model("deepseek-v3.2")
    hw = load_hardware(args.hardware)
    w = load_workload(
        "chat",
        isl_tokens=1024,
        osl_tokens=2048,
        ttft_slo_s=5.0,
        tpot_slo_s=0.05,
        slo_percentile="p90",
    )
    space = GridSpace(batch_ladder=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
    bounds = {"flops": (250e12, 8e15), "hbm_bandwidth": (1e12, 32e12)}
    hs = HardwareSpace.make(("flops", "hbm_bandwidth"), bounds, levels)
    obj_usd = make_objective("tokens-per-dollar")
    obj_dev = make_objective("tokens-per-device")
    settings = OptimizeSettings(starts=8 if args.quick else 16, steps=100, seed=0)

    t0 = time.perf_counter()
    r = optimize_scheme(hw, model, args.devices, w, "aggregated", space, obj_usd, hs, settings)
    t_opt = time.perf_counter() - t0

    # the exact hardware x deployment space: every table row on every (FLOP/s, HBM bw) level
    t0 = time.perf_counter()
    size = r.space.table.size
    cells = np.array([(i, j) for i in range(levels) for j in range(levels)])
    rows = np.repeat(np.arange(size), len(cells))
    hidx = np.tile(cells, (size, 1))
    cm = default_cost_model()
    out = {}
    for name, obj in (("tok_per_usd", obj_usd), ("tok_per_device", obj_dev)):
        ctx = (hw, model, w, r.space, hs, obj, cm, True)
        m, val, _ = _exact(ctx, rows, hidx)
        out[name] = _best_per_cell(m, val, rows, hidx, (levels, levels))
    t_grid = time.perf_counter() - t0

    fl, bw = hs.levels
    best_usd, arg_usd = out["tok_per_usd"]
    i, j = np.unravel_index(np.nanargmax(best_usd), best_usd.shape)
    exact_best = float(best_usd[i, j])
    # paths: hardware coordinates of every start, normalised -> SI
    hz = r.path[:, :, r.space.dim :]
    paths = [np.asarray(hs.values(p)) for p in hz]  # (steps, 2) SI values
    ans = (r.hardware["flops"], r.hardware["hbm_bandwidth"])
    base = f"{model.name}, {args.devices} x {hw.name}-class, ISL 1024 / OSL 2048, TPOT p90 50 ms"
    _heatmap(
        os.path.join(OUT, f"{tag}_tok_per_usd.png"),
        best_usd / 1e6,
        fl,
        bw,
        f"best output tokens per USD (millions)\n{base}",
        "M tok / USD",
        paths,
        ans,
    )
    _heatmap(
        os.path.join(OUT, f"{tag}_tok_per_device.png"),
        out["tok_per_device"][0],
        fl,
        bw,
        f"best output tokens/s per device\n{base}",
        "tok/s/device",
    )

    lines = [
        "# HBM bandwidth vs FLOP/s co-design: DeepSeek-V3.2, decode-heavy chat",
        "",
        f"`python -m experiments.codesign_hbm_flops{' --quick' if args.quick else ''}`; "
        f"{args.devices} devices on the {hw.name} fabric, aggregated serving (exact grid of "
        f"{size} deployments per hardware point), {levels} x {levels} hardware levels "
        f"(FLOP/s {fl[0] / 1e12:.0f}-{fl[-1] / 1e12:.0f} TFLOP/s, HBM {bw[0] / 1e12:.1f}-"
        f"{bw[-1] / 1e12:.0f} TB/s, log-spaced). Price/power: parametric cost model "
        f"anchored at {hw.name} ({float(hw.accel.price_usd_per_hour):.2f} USD/h, "
        f"{float(hw.accel.power_w):.0f} W), electricity 0.10 USD/kWh.",
        "",
        "Best tokens per USD (millions) per cell; rows: HBM bandwidth (TB/s), columns: "
        "BF16 TFLOP/s; `-`: no deployment meets the SLOs.",
        "",
        "| HBM TB/s \\ TFLOP/s | " + " | ".join(f"{x / 1e12:.0f}" for x in fl) + " |",
        "|---" * (levels + 1) + "|",
    ]
    for jj in range(levels - 1, -1, -1):
        cells_txt = [
            "-" if np.isnan(best_usd[ii, jj]) else f"{best_usd[ii, jj] / 1e6:.2f}"
            for ii in range(levels)
        ]
        lines.append(f"| {bw[jj] / 1e12:.1f} | " + " | ".join(cells_txt) + " |")
    lines += [
        "",
        "| | FLOP/s (TFLOP/s) | HBM (TB/s) | tok/USD | meets SLOs | wall (s) |",
        "|---|---|---|---|---|---|",
        f"| exact optimum ({len(rows)} points) | {fl[i] / 1e12:.0f} | {bw[j] / 1e12:.2f} | "
        f"{exact_best:.4g} | yes | {t_grid:.1f} |",
        f"| optimiser ({settings.starts} starts x {settings.steps} steps, {r.evaluated} exact) "
        f"| {ans[0] / 1e12:.0f} | {ans[1] / 1e12:.2f} | {r.objective:.4g} | "
        f"{'yes' if r.meets_slo else 'NO'} | {t_opt:.1f} |",
        "",
        f"Optimiser / exact optimum: {r.objective / exact_best:.4f}. Optimiser deployment: "
        f"`{json.dumps(r.deployment())}`.",
        "",
        "Wall times include compilation; the exact sweep is cheap here only because the space "
        "is 2-D; with four hardware parameters at 32 levels it has > 10^8 points "
        "(`benchmarks/bench_search.py`).",
    ]
    with open(os.path.join(OUT, f"{tag}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(OUT, f"{tag}.json"), "w") as f:
        json.dump(
            {
                "flops_levels": fl.tolist(),
                "hbm_levels": bw.tolist(),
                "best_tok_per_usd": np.where(np.isnan(best_usd), None, best_usd).tolist(),
                "best_tok_per_device": np.where(
                    np.isnan(out["tok_per_device"][0]), None, out["tok_per_device"][0]
                ).tolist(),
                "exact_best_tok_per_usd": exact_best,
                "optimiser_tok_per_usd": r.objective,
                "optimiser_hardware": r.hardware,
                "optimiser_deployment": r.deployment(),
                "optimiser_meets_slo": r.meets_slo,
                "optimiser_wall_s": t_opt,
                "exact_wall_s": t_grid,
            },
            f,
            indent=2,
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
