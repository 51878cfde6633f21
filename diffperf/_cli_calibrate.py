"""CLI edge for `diffperf calibrate` and `diffperf profile` (registered by diffperf.cli)."""

import json
import time
from pathlib import Path


def register(sub) -> None:
    """Add ``calibrate`` and ``profile`` to the `diffperf` parser."""
    from .cli import _positive_float, _positive_int

    p = sub.add_parser(
        "calibrate",
        help="fit a device's efficiency parameters to measured kernel tables",
        description=(
            "Fit the efficiency parameters (per op family and dtype) of --hardware to measured "
            "kernel rows with optax on a robust log-error loss, report train and held-out "
            "error and per-parameter uncertainty, and write a preset TOML usable as "
            "--hardware in every command."
        ),
    )
    p.add_argument("--hardware", required=True, help="preset name or TOML: peaks and prior")
    p.add_argument("--input", action="append", required=True, help="measured CSV (repeatable)")
    p.add_argument("--output", required=True, help="preset TOML to write")
    p.add_argument(
        "--device",
        default=None,
        help="use rows whose device column is this (default: the only device in the input, "
        "or the one matching --hardware)",
    )
    p.add_argument(
        "--holdout",
        type=_positive_float("holdout", allow_zero=True),
        default=0.0,
        help="fraction of shape groups held out for testing (default 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and bootstrap")
    p.add_argument("--steps", type=_positive_int("steps"), default=400, help="Adam steps")
    p.add_argument(
        "--learning-rate", type=_positive_float("learning-rate"), default=0.05, help="Adam step"
    )
    p.add_argument(
        "--delta",
        type=_positive_float("delta"),
        default=0.02,
        help="pseudo-Huber transition on |log(pred/meas)| (default 0.02)",
    )
    p.add_argument(
        "--bootstrap",
        type=_nonneg_int("bootstrap"),
        default=0,
        help="shape-group bootstrap refits for uncertainty (default 0: curvature only)",
    )
    p.add_argument(
        "--family",
        action="append",
        help="fit only this efficiency family (gemm, attention, moe, comm; repeatable)",
    )
    p.add_argument(
        "--init-profile",
        default=None,
        help="start from this efficiency profile (e.g. cpu, hopper) instead of the device's",
    )
    p.add_argument("--name", default=None, help="name of the written preset (default: file stem)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "profile",
        help="measure the local JAX device (GEMMs, attention, memory copies) into a CSV",
        description=(
            "Time jitted JAX kernels on the default JAX device (fastest of repeats after "
            "warm-up) and write rows in the measured-kernel schema, with a provenance header "
            "in a sidecar JSON (<output>.json)."
        ),
    )
    p.add_argument("--output", required=True, help="CSV to write")
    p.add_argument("--quick", action="store_true", help="a reduced set (<= 60 s on 2 cores)")
    p.add_argument("--repeats", type=_positive_int("repeats"), default=None)
    p.add_argument(
        "--ops",
        default=None,
        help="comma-separated subset of gemm,attention_prefill,attention_decode,memcpy",
    )
    p.add_argument("--device-name", default=None, help="device column (default: from JAX)")
    p.add_argument(
        "--max-seconds",
        type=_positive_float("max-seconds"),
        default=None,
        help="stop measuring after this long and write the kernels measured so far "
        "(a random subset of the plan)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)


def _nonneg_int(name):
    import argparse

    def conv(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name} = {s!r} is not an integer") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"--{name} = {v} must be >= 0")
        return v

    return conv


def _table(rows, header) -> str:
    from ._report import table

    return table(rows, header)


def cmd_calibrate(args) -> int:
    from .calibrate import concat_tables, read_kernel_csv
    from .calibrate._fit import FitConfig, fit_efficiency, preset_toml, rows_for_device
    from .hardware import load_hardware
    from .hardware._presets import efficiency_profile

    if args.holdout >= 1:
        raise ValueError(f"--holdout = {args.holdout} must be below 1")
    t0 = time.perf_counter()
    hw = load_hardware(args.hardware)
    cols = concat_tables([read_kernel_csv(p) for p in args.input])
    cols, device = rows_for_device(cols, hw.name, args.device, args.hardware)
    if args.init_profile:
        from .calibrate._fit import with_efficiency

        prof = efficiency_profile(args.init_profile)
        hw = with_efficiency(
            hw, {(fam, k): float(v) for fam, tab in prof.items() for k, v in tab.items()}
        )
    cfg = FitConfig(
        steps=args.steps,
        learning_rate=args.learning_rate,
        delta=args.delta,
        holdout=args.holdout,
        seed=args.seed,
        bootstrap=args.bootstrap,
        families=tuple(args.family) if args.family else None,
    )
    res = fit_efficiency(hw, cols, cfg)
    wall = time.perf_counter() - t0
    out = Path(args.output)
    name = args.name or out.stem
    src = Path(args.hardware)
    inherit = str(src.resolve()) if (src.suffix == ".toml" or src.exists()) else args.hardware
    prov = [
        f"Written by `diffperf calibrate` (diffperf calibrate --hardware {args.hardware} "
        + " ".join(f"--input {p}" for p in args.input)
        + f" --holdout {args.holdout} --seed {args.seed} --steps {args.steps}"
        + f" --delta {args.delta}"
        + (f" --init-profile {args.init_profile}" if args.init_profile else "")
        + ")",
        f"device rows: {device!r}; inputs: " + ", ".join(Path(p).name for p in args.input),
        "Fractions are fitted through a sigmoid, positive values through exp; ± is 1 sigma "
        "(curvature/sandwich).",
    ]
    text = preset_toml(res, inherit, name, prov)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    # the written file must load and reproduce the fit (fails loudly otherwise)
    load_hardware(out)
    summary = res.summary()
    if args.json:
        print(json.dumps({"output": str(out), "device": device, "wall_s": wall, **summary}))
        return 0
    rows = []
    hold = {(r["op"], r["dtype"]): r for r in res.holdout_errors}
    prior = {(r["op"], r["dtype"]): r for r in res.prior_errors}
    for r in res.train_errors:
        key = (r["op"], r["dtype"])
        h = hold.get(key)
        rows.append(
            [
                r["op"],
                r["dtype"],
                str(r["rows"]),
                f"{100 * prior[key]['median_abs_rel_err']:.1f}%",
                f"{100 * r['median_abs_rel_err']:.1f}%",
                str(h["rows"]) if h else "-",
                f"{100 * h['median_abs_rel_err']:.1f}%" if h else "-",
            ]
        )
    print(f"calibrated {device} ({', '.join(res.families)}) in {wall:.1f} s")
    print(
        _table(
            rows,
            [
                "op",
                "dtype",
                "train rows",
                "prior |err|",
                "fit |err|",
                "held-out rows",
                "held |err|",
            ],
        )
    )
    prows = [
        [
            f"{p.family}.{p.name}",
            f"{p.prior:.4g}",
            f"{p.value:.4g}",
            f"{p.std:.2g}",
            f"{p.bootstrap_std:.2g}" if p.bootstrap_std is not None else "-",
        ]
        for p in res.params
    ]
    print()
    print(_table(prows, ["parameter", "prior", "fitted", "± (curvature)", "± (bootstrap)"]))
    if res.unconstrained:
        print("\nnot constrained by the data (kept): " + ", ".join(res.unconstrained))
    print(f"\nwrote {out} (use it as --hardware {out})")
    return 0


def cmd_profile(args) -> int:
    from .calibrate._profile import PROFILE_OPS, profile_device

    ops = tuple(o.strip() for o in args.ops.split(",")) if args.ops else PROFILE_OPS
    bad = [o for o in ops if o not in PROFILE_OPS]
    if bad:
        raise ValueError(f"--ops {','.join(bad)}: unknown; choose from {', '.join(PROFILE_OPS)}")
    t0 = time.perf_counter()
    res = profile_device(
        args.output,
        quick=args.quick,
        repeats=args.repeats,
        ops=ops,
        device_name=args.device_name,
        max_seconds=args.max_seconds,
    )
    wall = time.perf_counter() - t0
    msg = {"output": args.output, "rows": res["rows"], "wall_s": wall, **res["provenance"]}
    if args.json:
        print(json.dumps(msg))
    else:
        p = res["provenance"]
        print(
            f"measured {res['rows']} kernels on {p['device_kind']} ({p['platform']}, "
            f"jax {p['jax_version']}) in {wall:.1f} s; wrote {args.output} and "
            f"{args.output}.json"
        )
        if p["stopped_at_max_seconds"] is not None:
            print(
                f"stopped at --max-seconds {args.max_seconds:g}: {p['kernels_measured']} of "
                f"{p['kernels_planned']} planned kernels measured"
            )
    return 0
