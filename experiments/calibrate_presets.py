"""Regenerate the calibrated presets from the measured tables shipped in calibration_data/.

    python -m experiments.calibrate_presets [--holdout-report]

For ``h100-sxm`` and ``b200-sxm`` this runs ``diffperf calibrate`` on every kernel table of
``calibration_data/kernels/`` (all op families, fitted jointly, all rows) and writes
``hardware_presets/devices/<device>-calibrated.toml``. With ``--holdout-report`` it first
runs the same fit holding out 30% of the shape groups (seed 0) and writes the train/held-out
errors to ``experiments/out/calibrate_holdout_<device>.json``.

The CPU preset ``hardware_presets/devices/epyc-genoa-2vcpu.toml`` is calibrated the same way
from ``calibration_data/profiles/epyc-genoa-2vcpu.csv`` (a ``diffperf profile`` run on the
project's CI machine): its ``[efficiency.*]`` tables are pasted from
``experiments/out/epyc-genoa-2vcpu-fit.toml`` written here. ``h200-sxm-calibrated.toml`` and
``gb200-calibrated.toml`` carry the H100 / B200 fits over to those spec-sheet devices
(``TRANSFERS``).
"""

import os
import sys
from pathlib import Path

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


def calibrate(device: str, output: Path, holdout: float = 0.0) -> int:
    args = ["calibrate", "--hardware", device, "--device", device, *_inputs()]
    args += ["--output", str(output), "--holdout", str(holdout), "--seed", "0"]
    return main(args)


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


def main_script(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    OUT.mkdir(parents=True, exist_ok=True)
    for dev in DEVICES:
        if "--holdout-report" in argv:
            import contextlib
            import io

            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = calibrate(dev, OUT / f"{dev}-holdout.toml", 0.3)
            print(buf.getvalue())
            if rc:
                return rc
        rc = calibrate(dev, ROOT / "hardware_presets" / "devices" / f"{dev}-calibrated.toml")
        if rc:
            return rc
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
