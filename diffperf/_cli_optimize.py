"""CLI edge for `diffperf optimize`: gradient search over deployments (and hardware)."""

import argparse
import json
import time

from ._hardware_names import HARDWARE_PARAMS, RESOURCE_TO_PARAM, canonical_hardware_param


def _bound(s: str):
    """``PARAM=LO:HI`` in the edge units of :data:`HARDWARE_UNITS` -> (param, lo_si, hi_si)."""
    from .search._relax import HARDWARE_UNITS

    try:
        name, rng = s.split("=", 1)
        lo, hi = (float(v) for v in rng.split(":", 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--bound = {s!r} must look like PARAM=LO:HI (e.g. hbm_bandwidth=2000:16000)"
        ) from None
    name = canonical_hardware_param(name)
    if name not in HARDWARE_PARAMS:
        raise argparse.ArgumentTypeError(
            f"--bound {name!r} must name one of {', '.join(HARDWARE_PARAMS)}"
        )
    if not (0 < lo < hi < float("inf")):
        raise argparse.ArgumentTypeError(f"--bound {s!r}: need 0 < LO < HI")
    scale = HARDWARE_UNITS[name][1]
    return name, lo * scale, hi * scale


def optimize_report(args) -> dict:
    """Run ``optimize`` for parsed arguments and return the JSON-ready report."""
    from .cli import _workload_dict, search_inputs
    from .search._objective import make_objective
    from .search._optimize import OptimizeSettings, optimize, optimum_dict
    from .search._relax import HARDWARE_UNITS, HardwareSpace, hardware_value

    if getattr(args, "pipeline", None):
        return pipeline_optimize_report(args)
    if args.devices is None:
        raise ValueError("--devices is required (the device budget), unless --pipeline is given")
    t0 = time.perf_counter()
    if args.devices < 1:
        raise ValueError(f"--devices = {args.devices} must be a positive integer")
    workload, hw, model, schemes, space, dtypes = search_inputs(args)
    objective = make_objective(
        args.objective,
        electricity_usd_per_kwh=args.electricity_usd_per_kwh,
        price_usd_per_hour=args.price_usd_per_hour,
        power_w=args.power_w,
    )
    hs = None
    if args.optimize_hardware:
        bounds = {name: (lo, hi) for name, lo, hi in (args.bound or [])}
        hs = HardwareSpace.make(args.optimize_hardware, bounds, args.hardware_resolution)
    elif args.bound:
        raise ValueError("--bound needs --optimize-hardware PARAM ...")
    settings = OptimizeSettings(
        starts=args.starts,
        steps=args.steps,
        seed=args.seed,
        neighbours=args.neighbours,
        tau=args.tau,
    )
    res = optimize(
        hw, model, args.devices, workload, schemes, space, objective, hs, settings, dtypes
    )
    out_schemes = {}
    for s in schemes:
        if s in res.skipped:
            out_schemes[s] = {"best": None, "reason": res.skipped[s]}
        else:
            r = res.schemes[s]
            out_schemes[s] = {
                "best": optimum_dict(r, objective),
                "reason": "" if r.meets_slo else f"closest design misses: {r.metrics['reason']}",
                "space_size": r.space_size,
                "evaluated_exactly": r.evaluated,
                "wall_s": r.wall_s,
            }
    best = optimum_dict(res.schemes[res.best], objective) if res.best else None
    rep = {
        "model": model.name,
        "hardware": hw.name,
        "devices": args.devices,
        "workload": _workload_dict(workload),
        "load": space.load,
        "objective": {
            "kind": objective.kind,
            "unit": objective.unit,
            "electricity_usd_per_kwh": float(objective.electricity_usd_per_kwh),
            "price_usd_per_hour": args.price_usd_per_hour,
            "power_w": args.power_w,
        },
        "optimized_hardware": list(hs.names) if hs else [],
        "base_hardware": {
            HARDWARE_UNITS[n][0]: float(hardware_value(hw, n)) / HARDWARE_UNITS[n][1]
            for n in (hs.names if hs else ())
        },
        "best": best,
        "meets_slo": bool(best and best["meets_slo"]),
        "reason": "" if best and best["meets_slo"] else "no design found that meets every SLO",
        "schemes": out_schemes,
        "space_size": int(sum(v.get("space_size", 0) for v in out_schemes.values())),
        "evaluated_exactly": int(sum(v.get("evaluated_exactly", 0) for v in out_schemes.values())),
        "settings": {
            "starts": settings.starts,
            "steps": settings.steps,
            "seed": settings.seed,
            "tau": settings.tau,
            "neighbours": settings.neighbours,
        },
        "wall_s": time.perf_counter() - t0,
    }
    return rep


def pipeline_optimize_report(args) -> dict:
    """``optimize --pipeline``: multi-start search over the pipeline's device split, batch
    sizes and retrieve-vs-recompute choices (``diffperf.search._pipeline_opt``)."""
    from .pipeline import load_pipeline
    from .search._pipeline_opt import (
        PipelineSearchSettings,
        pipeline_search_dict,
        search_pipeline,
    )

    t0 = time.perf_counter()
    p = load_pipeline(args.pipeline)
    settings = PipelineSearchSettings(
        starts=args.starts,
        steps=args.steps,
        seed=args.seed,
        tau=args.tau,
        learning_rate=args.learning_rate,
        cpu_slices=args.cpu_slices,
    )
    res = search_pipeline(p, settings)
    rep = {"pipeline": args.pipeline, **pipeline_search_dict(p, res)}
    rep["settings"] = {
        "starts": settings.starts,
        "steps": settings.steps,
        "seed": settings.seed,
        "tau": settings.tau,
        "learning_rate": settings.learning_rate,
        "cpu_slices": settings.cpu_slices,
    }
    rep["wall_s"] = time.perf_counter() - t0
    return rep


def _print_pipeline_optimize(r: dict):
    b = r["best"]
    print(
        f"pipeline {r['pipeline']}: best rounded design, objective {r['objective']:.4g} "
        f"(relaxed optimum {r['relaxed']['loss']:.4g})"
    )
    print(
        f"throughput {b['throughput_per_s']:.4g} req/s ({b['throughput_per_device']:.4g} "
        f"req/s/device on {b['devices']:g} devices), e2e {b['e2e_latency_s']:.4g} s, TTFT "
        f"{b['ttft_s']:.4g} s, meets SLO: " + ("yes" if b["meets_slo"] else "NO")
    )
    for name, s in b["design"].items():
        extra = f", {s['retrieval']}" if "retrieval" in s else ""
        print(
            f"  {name}: {s['devices']:g} device(s) of {s['engine']}, batch "
            f"{s['batch_size']:g}{extra}"
        )
    print(f"{r['evaluated_exactly']} rounded designs evaluated exactly in {r['wall_s']:.2f} s")


def _print_optimize(r: dict):
    from ._report import fmt_time, table
    from .cli import _fmt_deployment

    w = r["workload"]
    print(
        f"{r['model']} on {r['devices']} x {r['hardware']}; workload {w['name']}: ISL "
        f"{w['isl_tokens']:g}, OSL {w['osl_tokens']:g}; SLO ({w['slo_percentile']}) TTFT "
        f"{w['ttft_slo_s']:g} s, TPOT {1e3 * w['tpot_slo_s']:g} ms; objective "
        f"{r['objective']['kind']} ({r['objective']['unit']})"
    )
    if r["optimized_hardware"]:
        print("hardware searched: " + ", ".join(r["optimized_hardware"]))
    print()
    rows = []
    for s, v in r["schemes"].items():
        b = v["best"]
        if b is None:
            rows.append([s, "-", "-", "-", "-", "-", "-", v["reason"]])
            continue
        rows.append(
            [
                s,
                f"{b['objective']:.4g}",
                "yes" if b["meets_slo"] else "NO",
                f"{b['throughput_tok_s_per_device']:.1f}",
                fmt_time(b["ttft_pct_s"]),
                fmt_time(b["tpot_pct_s"]),
                f"{v['evaluated_exactly']}/{v['space_size']}",
                _fmt_deployment(b["deployment"]),
            ]
        )
    hdr = ["scheme", "objective", "meets SLO", "tok/s/dev", "TTFT", "TPOT", "exact/space"]
    print(table(rows, [*hdr, "rounded deployment"]))
    b = r["best"]
    print()
    if b is None:
        print("no scheme has a design")
    else:
        print(
            f"best: {b['scheme']}, {b['objective']:.4g} {b['objective_unit']} "
            f"({b['throughput_tok_s_per_device']:.1f} tok/s/device), meets every SLO: "
            + ("yes" if b["meets_slo"] else "NO")
        )
        for k, v in (b.get("hardware") or {}).items():
            print(f"  {k} = {v:.4g}")
    print(f"{r['evaluated_exactly']} designs evaluated exactly in {r['wall_s']:.2f} s")


def cmd_optimize(args) -> int:
    r = optimize_report(args)
    if args.json:
        print(json.dumps(r, indent=2))
    elif getattr(args, "pipeline", None):
        _print_pipeline_optimize(r)
    else:
        _print_optimize(r)
    return 0


def _hardware_param(s: str) -> str:
    """``--optimize-hardware`` entry: a hardware parameter name or alias (canonical name)."""
    name = canonical_hardware_param(s)
    if name not in HARDWARE_PARAMS:
        raise argparse.ArgumentTypeError(
            f"--optimize-hardware {s!r} must name one of {', '.join(HARDWARE_PARAMS)} "
            f"(or {', '.join(RESOURCE_TO_PARAM)})"
        )
    return name


def register(sub) -> None:
    """Add ``optimize`` to the `diffperf` parser."""
    from .cli import _positive_float, _positive_int, add_search_space_flags

    p = sub.add_parser(
        "optimize", help="gradient search for the best deployment (and hardware) on N devices"
    )
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--hardware", default="h100-sxm", help="preset or TOML (base hardware)")
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="device budget (all used); required unless --pipeline is given",
    )
    p.add_argument(
        "--pipeline",
        default=None,
        help="pipeline TOML or example name: search its device split, batch sizes and "
        "retrieve-vs-recompute choices instead",
    )
    p.add_argument(
        "--learning-rate",
        type=_positive_float("learning-rate"),
        default=0.1,
        help="Adam step size (--pipeline)",
    )
    p.add_argument(
        "--cpu-slices",
        type=_positive_int("cpu-slices"),
        default=8,
        help="slices per CPU socket when splitting shared-memory engines (--pipeline)",
    )
    add_search_space_flags(p)
    p.add_argument(
        "--objective",
        default="tokens-per-device",
        choices=["tokens-per-device", "tokens-per-dollar", "tokens-per-watt"],
    )
    p.add_argument(
        "--optimize-hardware",
        nargs="+",
        default=None,
        metavar="PARAM",
        type=_hardware_param,
        help="hardware parameters to search: "
        + ", ".join(HARDWARE_PARAMS)
        + " (hbm_bw, scaleup_bw, scaleout_bw as in sensitivity/project are accepted)",
    )
    p.add_argument(
        "--bound",
        type=_bound,
        action="append",
        help="PARAM=LO:HI in TFLOP/s (flops), GB/s, GB or devices (repeatable)",
    )
    p.add_argument(
        "--hardware-resolution",
        type=_positive_int("hardware-resolution"),
        default=32,
        help="levels per searched hardware parameter (geometric between the bounds)",
    )
    p.add_argument("--starts", type=_positive_int("starts"), default=16)
    p.add_argument("--steps", type=_positive_int("steps"), default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neighbours", type=_positive_int("neighbours"), default=16)
    p.add_argument("--tau", type=_positive_float("tau"), default=0.05)
    p.add_argument(
        "--electricity-usd-per-kwh",
        type=_positive_float("electricity-usd-per-kwh", allow_zero=True),
        default=0.10,
    )
    p.add_argument("--price-usd-per-hour", type=_positive_float("price-usd-per-hour"), default=None)
    p.add_argument("--power-w", type=_positive_float("power-w"), default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_optimize)
