"""Regenerate the calibrated presets from the measured tables shipped in calibration_data/.

    python -m experiments.calibrate_presets [--holdout-report [--seeds N]]
    python -m experiments.calibrate_presets --start-from-other [--seeds N]

For ``h100-sxm`` and ``b200-sxm`` this runs ``diffperf calibrate`` on every kernel table of
``calibration_data/kernels/`` (all op families, fitted jointly, all rows) and writes
``hardware_presets/devices/<device>-calibrated.toml``. With ``--holdout-report [--seeds N]``
it first runs the same fit N times (default 3), each holding out 30% of the shape groups of
every kernel (op, dtype, implementation, scope) with split seed 0 .. N-1, prints per group
the held-out median |relative error| of each split and writes them, with which shapes each
split held out, to ``experiments/out/calibrate_holdout_<device>.json``. One split alone says
little: whether the held-out GEMM shape is the smallest one or a middle one moves a group's
error by 2x. ``--start-from-other`` runs only those held-out fits, each device's started from
the other device's hand-fitted values (H100 from blackwell, B200 from hopper; tiles, slots
and thresholds stay the device's own) instead of its own hand profile, which was fitted on
all of its rows: a check of how much the held-out figures owe to that start. It writes
``experiments/out/calibrate_holdout_<device>_from-<profile>.json`` and leaves the presets.

The CPU preset ``hardware_presets/devices/epyc-genoa-2vcpu.toml`` is calibrated the same way
from ``calibration_data/profiles/epyc-genoa-2vcpu.csv`` (a ``diffperf profile`` run on the
project's CI machine): its ``[efficiency.*]`` tables are pasted from
``experiments/out/epyc-genoa-2vcpu-fit.toml`` written here. ``h200-sxm-calibrated.toml`` and
``gb200-calibrated.toml`` carry the H100 / B200 fits over to those spec-sheet devices
(``TRANSFERS``).
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from diffperf.cli import main


ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "calibration_data" / "kernels"
OUT = ROOT / "experiments" / "out"
DEVICES = ("h100-sxm", "b200-sxm")
TABLES = (
    "gemm",
    "attention_prefill",
    "attention_decode",
    "mla",
    "moe",
    "collectives",
    "moe_alltoall",
)


def _inputs():
    out = []
    for t in TABLES:
        out += ["--input", os.path.relpath(DATA / f"{t}.csv")]
    return out


def calibrate(device: str, output: Path) -> int:
    """Fit ``device`` on every row (no hold-out) and write the preset ``output``."""
    args = ["calibrate", "--hardware", device, "--device", device, *_inputs()]
    return main([*args, "--output", str(output)])


# Spec-sheet devices that share an architecture (and kernels) with a calibrated one: the
# fitted fractions/latencies transfer, the peaks and bandwidths are the target's own.
TRANSFERS = {
    "h200-sxm": (
        "h100-sxm",
        "H200 = H100 silicon (same 132 SMs, clocks and kernels) with 141 GB HBM3e at 4.8 TB/s: "
        "compute fractions and launch/latency terms transfer unchanged; memory fractions are "
        "assumed equal (same memory controller, faster stacks).",
    ),
    "gb200": (
        "b200-sxm",
        "GB200 = two B200-class dies per package at a higher power limit (own peaks in the "
        "gb200 preset): fractions of peak and kernel latencies transfer from B200; the "
        "NVL72 fabric's own latency/bandwidth figures come from the gb200 preset, the "
        "collective fractions from the 8-GPU B200 fit.",
    ),
}


def transfer(source_toml: Path, target: str, note: str, output: Path) -> None:
    """Write ``output``: ``inherit = target`` plus the fitted ``[efficiency.*]`` of source."""
    import tomllib

    raw = tomllib.loads(source_toml.read_text())
    lines = [
        f"# Calibrated efficiency TRANSFERRED from {source_toml.name} (fitted on measured "
        f"{raw['inherit']} tables) to {target}, which has only a spec sheet here.",
        f"# {note}",
        "# Regenerate: python -m experiments.calibrate_presets",
        f'name = "{target}-calibrated"',
        f'inherit = "{target}"',
    ]
    for fam, table in raw.get("efficiency", {}).items():
        lines += ["", f"[efficiency.{fam}]"]
        lines += [f"{k} = {float(v)!r}" for k, v in table.items()]
    output.write_text("\n".join(lines) + "\n")


HOLDOUT_FRACTION = 0.3


def _held_shapes(cols, train) -> dict[str, list[str]]:
    """Per ``op|dtype``: the shape groups a split held out (``shape_group_labels``)."""
    from diffperf.calibrate._fit import shape_group_labels

    # the labels hold numpy reprs ("np.float64(8.0)"); show the bare values
    labels = [re.sub(r"np\.\w+\((.*?)\)", r"\1", str(x)) for x in shape_group_labels(cols)]
    out: dict[str, set] = {}
    for i in np.flatnonzero(~train):
        out.setdefault(f"{cols['op'][i]}|{cols['dtype'][i]}", set()).add(str(labels[i]))
    return {k: sorted(v) for k, v in sorted(out.items())}


# --start-from-other: each device's held-out fits start from the other device's hand profile
START_FROM_OTHER = {"h100-sxm": "blackwell", "b200-sxm": "hopper"}


def start_from_profile(hw, profile: str):
    """``hw`` with every fitted efficiency field (``FIT_FIELDS``) taken from ``profile``; the
    kernel structure (tiles, slots, thresholds) and the peaks stay ``hw``'s own."""
    from diffperf.calibrate._fit import FIT_FIELDS, with_efficiency
    from diffperf.hardware import efficiency_profile

    src = efficiency_profile(profile)
    return with_efficiency(
        hw, {(fam, name): src[fam][name] for fam, names in FIT_FIELDS.items() for name in names}
    )


def holdout_report(device: str, seeds: int, start_profile: str | None = None) -> dict:
    """Fit ``device`` ``seeds`` times on 70% of its shape groups; held-out errors per group.

    ``start_profile``: start the fits from that efficiency profile's fitted values
    (:func:`start_from_profile`) instead of the device's hand profile, which was fitted on
    all of the device's rows; parameters the training rows pin down weakly then cannot
    inherit what the held-out rows taught the hand fit.
    """
    from diffperf.calibrate import concat_tables, read_kernel_csv, select_rows
    from diffperf.calibrate._fit import FitConfig, fit_efficiency
    from diffperf.hardware import load_hardware

    cols = concat_tables([read_kernel_csv(DATA / f"{t}.csv") for t in TABLES])
    cols = select_rows(cols, cols["device"] == device)
    hw = load_hardware(device)
    if start_profile:
        hw = start_from_profile(hw, start_profile)
    per_seed = []
    for seed in range(seeds):
        res = fit_efficiency(hw, cols, FitConfig(holdout=HOLDOUT_FRACTION, seed=seed))
        per_seed.append(
            {
                "seed": seed,
                "held_out": {
                    f"{r['op']}|{r['dtype']}": r["median_abs_rel_err"] for r in res.holdout_errors
                },
                "train": {
                    f"{r['op']}|{r['dtype']}": r["median_abs_rel_err"] for r in res.train_errors
                },
                "held_out_shapes": _held_shapes(cols, res.train_mask),
            }
        )
    groups = sorted(
        {g for s in per_seed for g in s["train"]} | {g for s in per_seed for g in s["held_out"]}
    )
    print(
        f"{device}: held-out median |rel err| per group, {seeds} splits "
        f"({HOLDOUT_FRACTION:.0%} of shape groups each)"
        + (f", fits started from the {start_profile} profile's values" if start_profile else "")
    )
    print(f"{'op|dtype':32s} " + " ".join(f"seed {s:<3d}" for s in range(seeds)) + "  worst  > 10%")
    above = 0
    for g in groups:
        vals = [s["held_out"].get(g) for s in per_seed]
        got = [v for v in vals if v is not None]
        cells = " ".join(f"{v * 100:7.1f}%" if v is not None else "       -" for v in vals)
        n_above = sum(v > 0.10 for v in got)
        above += n_above
        worst = f"{max(got) * 100:5.1f}%" if got else "    -"
        print(f"{g:32s} {cells}  {worst}  {n_above}/{len(got)}")
    n_cells = sum(len(s["held_out"]) for s in per_seed)
    print(f"{above} of {n_cells} (group, split) cells above 10%\n")
    return {
        "device": device,
        "holdout_fraction": HOLDOUT_FRACTION,
        "start_profile": start_profile or "hand profile",
        "splits": per_seed,
    }


def main_script(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.calibrate_presets")
    ap.add_argument("--holdout-report", action="store_true", help="held-out fits first")
    ap.add_argument("--seeds", type=int, default=3, help="held-out splits (default 3)")
    ap.add_argument(
        "--start-from-other",
        action="store_true",
        help="held-out fits only, each device started from the other's hand-fitted values "
        "(the presets are not rewritten)",
    )
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.seeds < 1:
        ap.error(f"--seeds = {args.seeds} must be >= 1")
    OUT.mkdir(parents=True, exist_ok=True)
    for dev in DEVICES:
        if args.holdout_report or args.start_from_other:
            start = START_FROM_OTHER[dev] if args.start_from_other else None
            rep = holdout_report(dev, args.seeds, start)
            suffix = f"_from-{start}" if start else ""
            (OUT / f"calibrate_holdout_{dev}{suffix}.json").write_text(json.dumps(rep, indent=1))
        if args.start_from_other:
            continue  # held-out fits only: the presets stay as they are
        rc = calibrate(dev, ROOT / "hardware_presets" / "devices" / f"{dev}-calibrated.toml")
        if rc:
            return rc
    if args.start_from_other:
        return 0
    dev_dir = ROOT / "hardware_presets" / "devices"
    for target, (src, note) in TRANSFERS.items():
        transfer(
            dev_dir / f"{src}-calibrated.toml", target, note, dev_dir / f"{target}-calibrated.toml"
        )
    prof = ROOT / "calibration_data" / "profiles" / "epyc-genoa-2vcpu.csv"
    if prof.exists():
        rc = main(
            [
                "calibrate",
                "--hardware",
                str(ROOT / "hardware_presets" / "devices" / "epyc-genoa-2vcpu.toml"),
                "--input",
                str(prof),
                "--output",
                str(OUT / "epyc-genoa-2vcpu-fit.toml"),
            ]
        )
    return rc


if __name__ == "__main__":
    sys.exit(main_script())
