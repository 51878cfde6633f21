"""CLI edge for ``diffperf sensitivity``, ``diffperf project`` and ``diffperf sweep``."""

import argparse
import json
import math
import time


SCHEMES = ("static", "aggregated", "disaggregated", "afd")


def _add_point_flags(p: argparse.ArgumentParser, default_scheme: str):
    from .cli import _add_workload_flags, _positive_float, _positive_int

    p.add_argument("--model", default="llama-3.1-8b", help="preset name, HF repo id, config.json")
    p.add_argument(
        "--scale-params",
        type=_positive_float("scale-params"),
        default=None,
        help="scale --model to this many parameters first (e.g. 10e12)",
    )
    p.add_argument("--hardware", default="h100-sxm", help="preset name or TOML file")
    p.add_argument(
        "--scheme",
        default=default_scheme,
        help="static (one batch, no queueing) | aggregated | disaggregated | afd",
    )
    for k in ("tp", "pp", "dp", "ep", "moe-tp"):
        p.add_argument(f"--{k}", type=_positive_int(k), default=None, help=f"plan {k} degree")
    p.add_argument("--batch", type=_positive_int("batch"), default=None, help="static: batch")
    p.add_argument(
        "--max-batch", type=_positive_int("max-batch"), default=None, help="aggregated: batch cap"
    )
    p.add_argument("--instances", type=_positive_int("instances"), default=None)
    p.add_argument("--dtype", default=None, help="weight/GEMM format (default: model's)")
    p.add_argument("--kv-dtype", default=None, help="KV-cache format (default bf16)")
    p.add_argument("--moe-dtype", default=None, help="expert weight format")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other deployment column (prefill_tp, decode_max_batch, attention_devices...)",
    )
    _add_workload_flags(p)
    p.add_argument("--json", action="store_true")


def _deployment_table(args) -> dict:
    t = {}
    for k in ("tp", "pp", "dp", "ep", "moe_tp", "batch", "max_batch", "instances"):
        v = getattr(args, k)
        if v is not None:
            t[k] = v
    for k in ("dtype", "kv_dtype", "moe_dtype"):
        v = getattr(args, k)
        if v is not None:
            t[k] = v
    for item in args.set:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r} must be KEY=VALUE")
        try:
            t[key.strip()] = float(val)
        except ValueError:
            raise ValueError(f"--set {item!r}: {val!r} is not a number") from None
    return t


def _point(args):
    """(hw, model, deploy, workload) from the flags."""
    from .cli import _workload_from_args
    from .hardware import load_hardware
    from .model import load_model
    from .model._scale import scale_model
    from .search._sweep import build_deployment

    if args.workload is None and (args.isl is None or args.osl is None):
        args.workload = "chat"
    workload = _workload_from_args(args, require_load=False)
    hw = load_hardware(args.hardware)
    model = load_model(args.model)
    if args.scale_params is not None:
        model = scale_model(model, args.scale_params)
    scheme = args.scheme.strip().lower()
    if scheme not in SCHEMES and scheme not in ("agg", "disagg", "pd"):
        raise ValueError(f"--scheme = {args.scheme!r} must be one of {', '.join(SCHEMES)}")
    deploy = build_deployment(scheme, model, _deployment_table(args), "deployment flags")
    return hw, model, deploy, workload


def _model_dict(model) -> dict:
    from ._report import to_float

    return {
        "name": model.name,
        "params": to_float(model.param_count()),
        "active_params": to_float(model.active_param_count()),
        "hidden_size": to_float(model.hidden_size),
        "num_layers": to_float(model.num_layers),
    }


# --------------------------------------------------------------------------------------------
# sensitivity
# --------------------------------------------------------------------------------------------


def sensitivity_report(args) -> dict:
    from .search._sensitivity import check_metric, elasticities, sweep_1d

    check_metric(args.metric)
    wrt = tuple(s.strip() for s in args.wrt.split(",") if s.strip())
    hw, model, deploy, workload = _point(args)
    t0 = time.perf_counter()
    s = elasticities(hw, model, deploy, workload, args.metric, wrt=wrt)
    rep = {
        "model": _model_dict(model),
        "hardware": hw.name,
        "scheme": args.scheme,
        "wrt": list(wrt),
        **s.to_dict(args.top),
        "leaves": len(s.names),
    }
    if args.sweep:
        lo, hi = args.sweep_range
        xs = [
            lo * (hi / lo) ** (i / max(args.sweep_points - 1, 1)) for i in range(args.sweep_points)
        ]
        r = sweep_1d(hw, model, deploy, workload, args.sweep, xs, (args.metric,))
        name = [k for k in r if k != args.metric][0]
        rep["sweep"] = {
            "parameter": name,
            "values": list(r[name]),
            args.metric: list(r[args.metric]),
        }
    rep["wall_s"] = time.perf_counter() - t0
    if args.plot:
        from ._plot_search import tornado

        tornado(
            s.top(args.top),
            args.plot,
            args.metric,
            f"{model.name} on {hw.name} ({args.scheme}): {args.metric} = {s.metric_value:.4g}",
        )
        rep["plot"] = args.plot
    return rep


def cmd_sensitivity(args) -> int:
    r = sensitivity_report(args)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    from ._report import table

    print(
        f"{r['model']['name']} on {r['hardware']} ({r['scheme']}): {r['metric']} = "
        f"{r['metric_value']:.6g}\n"
    )
    print(
        table(
            [[k, f"{v:+.4f}"] for k, v in r["resources"].items()],
            ["resource (all its leaves x s)", "elasticity"],
        )
    )
    print()
    print(
        table(
            [
                [e["name"], f"{e['value']:.4g}", f"{e['elasticity']:+.4f}"]
                for e in r["elasticities"]
            ],
            ["parameter", "value (SI)", f"d log {r['metric']} / d log x"],
        )
    )
    if "sweep" in r:
        sw = r["sweep"]
        print()
        print(
            table(
                [[f"{x:.4g}", f"{y:.6g}"] for x, y in zip(sw["values"], sw[r["metric"]])],
                [sw["parameter"], r["metric"]],
            )
        )
    if r.get("plot"):
        print(f"\ntornado plot written to {r['plot']}")
    return 0


# --------------------------------------------------------------------------------------------
# project
# --------------------------------------------------------------------------------------------


def project_report(args) -> dict:
    from .search._project import CONSTRAINTS, project, requirements_table
    from .search._sensitivity import RESOURCES

    hw, model, deploy, workload = _point(args)
    constraints = tuple(c.strip() for c in args.constraints.split(",") if c.strip())
    for c in constraints:
        if c not in CONSTRAINTS:
            raise ValueError(f"--constraints: {c!r} must be among {', '.join(CONSTRAINTS)}")
    resources = tuple(r.strip() for r in (args.resources or ",".join(RESOURCES)).split(","))
    for r in resources:
        if r not in RESOURCES:
            raise ValueError(f"--resources: {r!r} must be among {', '.join(RESOURCES)}")
    kw = dict(others=args.others, lo=args.lo, hi=args.hi, constraints=constraints)
    t0 = time.perf_counter()
    rep = {
        "model": _model_dict(model),
        "hardware": hw.name,
        "scheme": args.scheme,
        "constraints": list(constraints),
        "others": args.others,
    }
    if args.joint:
        direction = {}
        for item in args.joint.split(","):
            name, _, exp = item.partition(":")
            try:
                direction[name.strip()] = float(exp) if exp else 1.0
            except ValueError:
                raise ValueError(f"--joint {item!r}: exponent {exp!r} is not a number") from None
        rep["joint"] = project(hw, model, deploy, workload, direction, **kw).to_dict()
    else:
        tab = requirements_table(hw, model, deploy, workload, resources, **kw)
        rep["requirements"] = {r: q.to_dict() for r, q in tab.items()}
    rep["wall_s"] = time.perf_counter() - t0
    return rep


def _fmt_req(q: dict, r: str) -> list[str]:
    if q["status"] == "unreachable":
        return [r, "-", "unreachable", f"{q['binding']} still violated at hi"]
    if q["status"] == "below_bracket":
        return [r, f"<= {q['factor']:.3g}", f"<= {q['values'][r]:.4g} {q['units'][r]}", "none"]
    return [
        r,
        f"{q['factor']:.4g}",
        f"{q['values'][r]:.4g} {q['units'][r]}",
        f"{q['binding']} (limiting: {q['limiting_resource']})",
    ]


def cmd_project(args) -> int:
    r = project_report(args)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    from ._report import table

    m = r["model"]
    print(
        f"{m['name']} ({m['params'] / 1e9:.4g}B parameters) on {r['hardware']} "
        f"({r['scheme']}); constraints: {', '.join(r['constraints'])}; other resources at "
        f"{r['others']:g} x reference\n"
    )
    if "joint" in r:
        q = r["joint"]
        print(f"joint scale factor: {q['factor']} ({q['status']}); binding: {q['binding']}")
        rows = [[k, f"{v:.4g} {q['units'][k]}"] for k, v in q["values"].items()]
        print(table(rows, ["resource", "required"]))
        print(f"limiting resource: {q['limiting_resource']}")
        return 0
    rows = [_fmt_req(q, res) for res, q in r["requirements"].items()]
    print(table(rows, ["resource", "factor vs ref", "least value", "binding"]))
    return 0


# --------------------------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------------------------


def _axis_spec(item: str):
    """``NAME=log:A:B:N`` | ``NAME=lin:A:B:N`` | ``NAME=v1,v2,...`` -> (name, spec dict)."""
    name, sep, spec = item.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--axis {item!r} must be NAME=log:A:B:N, NAME=lin:A:B:N or NAME=v1,v2")
    parts = spec.split(":")
    try:
        if parts[0] in ("log", "lin"):
            if len(parts) != 4:
                raise ValueError
            a, b, n = float(parts[1]), float(parts[2]), int(parts[3])
            return name.strip(), {
                ("logspace" if parts[0] == "log" else "linspace"): [a, b],
                "num": n,
            }
        return name.strip(), {"values": [float(v) for v in spec.split(",")]}
    except ValueError:
        raise ValueError(
            f"--axis {item!r}: {spec!r} must be log:A:B:N, lin:A:B:N or a comma list of numbers"
        ) from None


def _init_distributed() -> None:
    """``jax.distributed.initialize`` from the launch environment, before the backend starts
    (the logic of ``diffperf.search._sweep.multiprocess_launch``, without importing the model
    layers, whose import starts the backend)."""
    import os

    import jax
    from jax._src import xla_bridge

    env = os.environ
    keys = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    explicit = all(k in env for k in keys)
    implicit = env.get("SLURM_NTASKS", "1") not in ("", "1") or env.get(
        "OMPI_COMM_WORLD_SIZE", "1"
    ) not in ("", "1")
    if not (explicit or implicit) or jax.distributed.is_initialized():
        return
    if xla_bridge.backends_are_initialized():
        return  # maybe_initialize_distributed raises the explanatory error
    if explicit:
        try:
            n, k = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        except ValueError:
            return  # reported by maybe_initialize_distributed
        jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], n, k)
    else:
        jax.distributed.initialize()


def sweep_report(args) -> dict:
    _init_distributed()  # before the imports below start the JAX backend
    from .search._sweep import load_space, maybe_initialize_distributed, run_sweep

    pidx, pcount = maybe_initialize_distributed()
    if getattr(args, "pipeline", None) or (args.config and _is_pipeline_space(args.config)):
        return pipeline_sweep_report(args)
    if args.config:
        if args.axis:
            raise ValueError("give the axes in --config or with --axis, not both")
        space = load_space(args.config)
    else:
        if not args.axis:
            raise ValueError("give --config SPACE.toml or at least one --axis NAME=SPEC")
        d = {
            "scheme": args.scheme,
            "model": args.model,
            "hardware": args.hardware,
            "workload": args.workload or "chat",
            "axes": dict(_axis_spec(a) for a in args.axis),
        }
        if args.outputs:
            d["outputs"] = [o.strip() for o in args.outputs.split(",") if o.strip()]
        dep = {}
        for item in args.set:
            key, sep, val = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r} must be KEY=VALUE")
            try:
                dep[key.strip()] = float(val)
            except ValueError:
                raise ValueError(f"--set {item!r}: {val!r} is not a number") from None
        d["deployment"] = dep
        space = load_space(d)
    if args.chunk:
        import dataclasses

        space = dataclasses.replace(space, chunk=args.chunk)
    if args.plot and space.size > 2_000_000:
        raise ValueError(
            f"--plot draws from rows held in memory; this space has {space.size} points "
            "(more than 2,000,000): plot a smaller sweep or read the written rows"
        )
    collect = bool(args.plot)
    rep = run_sweep(
        space, args.output, progress=not args.no_progress, collect=collect, process=(pidx, pcount)
    )
    return _finish_sweep(args, space, rep)


def _finish_sweep(args, space, rep: dict) -> dict:
    """Draw the optional plot and make the report JSON-safe (non-finite ranges -> null)."""
    if args.plot:
        from ._plot_search import sweep_plot

        metric = args.plot_metric or space.outputs[0]
        if metric not in rep.get("columns", {}):
            raise ValueError(f"--plot-metric = {metric!r} is not among the outputs {space.outputs}")
        sweep_plot(rep["columns"], rep["axes"], metric, args.plot, f"{metric} ({space.source})")
        rep["plot"] = args.plot
    rep.pop("columns", None)
    for v in rep["range"].values():
        for k in ("min", "max"):
            if not math.isfinite(v[k]):
                v[k] = None
    return rep


def _is_pipeline_space(path: str) -> bool:
    """Whether a design-space file names a ``pipeline`` (then it is a pipeline sweep)."""
    from pathlib import Path

    from .search._sweep import _read

    return "pipeline" in _read(Path(path))


def pipeline_sweep_report(args) -> dict:
    """``sweep --pipeline P --axis NAME=SPEC ...`` or a space file with ``pipeline = ...``:
    vmapped, chunked sweep over pipeline float leaves (``diffperf.search._sweep``)."""
    import dataclasses

    from .search._sweep import load_pipeline_space, run_pipeline_sweep

    if args.pipeline and args.config:
        raise ValueError("give the pipeline with --pipeline or in --config, not both")
    if args.config:
        if args.axis:
            raise ValueError("give the axes in --config or with --axis, not both")
        space = load_pipeline_space(args.config)
    else:
        if not args.axis:
            raise ValueError(f"--pipeline {args.pipeline!r} needs at least one --axis NAME=SPEC")
        d = {"pipeline": args.pipeline, "axes": dict(_axis_spec(a) for a in args.axis)}
        if args.outputs:
            d["outputs"] = [o.strip() for o in args.outputs.split(",") if o.strip()]
        space = load_pipeline_space(d, __import__("pathlib").Path.cwd())
    if args.set:
        raise ValueError("--set applies to deployments; sweep pipeline values with --axis")
    if args.chunk:
        space = dataclasses.replace(space, chunk=args.chunk)
    rep = run_pipeline_sweep(
        space, args.output, progress=not args.no_progress, collect=bool(args.plot)
    )
    return _finish_sweep(args, space, rep)


def cmd_sweep(args) -> int:
    r = sweep_report(args)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(
        f"{r['points']} of {r['space_points']} points (axes {', '.join(r['axes'])}; shape "
        f"{r['shape']}) on {r['devices']} device(s), process {r['process'][0]} of "
        f"{r['process'][1]}: {r['wall_s']:.2f} s ({r['points_per_s']:.3g} points/s)"
    )
    print(f"feasible: {r['feasible']}")
    for k, v in r["range"].items():
        print(f"{k}: min {v['min']}, max {v['max']}")
    if r["output"]:
        print(f"rows written to {r['output']}")
    if r.get("plot"):
        print(f"plot written to {r['plot']}")
    return 0


# --------------------------------------------------------------------------------------------


def register(sub) -> None:
    """Add ``sensitivity``, ``project`` and ``sweep`` to the ``diffperf`` parser."""
    from .cli import _positive_float, _positive_int

    p = sub.add_parser("sensitivity", help="elasticities d log(metric)/d log(parameter)")
    _add_point_flags(p, "aggregated")
    p.add_argument("--metric", default="tpot_s", help="Metrics field (tpot_s, ttft_pct_s, ...)")
    p.add_argument(
        "--wrt", default="hardware,workload", help="roots: hardware,workload,deployment,model"
    )
    p.add_argument("--top", type=_positive_int("top"), default=15, help="largest elasticities")
    p.add_argument("--plot", default=None, help="write a tornado PNG")
    p.add_argument("--sweep", default=None, help="also sweep this parameter (e.g. scale.hbm_bw)")
    p.add_argument(
        "--sweep-range",
        type=_positive_float("sweep-range"),
        nargs=2,
        default=(0.25, 4.0),
        metavar=("LO", "HI"),
        help="geometric range of the sweep (SI or factor)",
    )
    p.add_argument("--sweep-points", type=_positive_int("sweep-points"), default=9)
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("project", help="least hardware that meets the SLOs (inverse design)")
    _add_point_flags(p, "static")
    p.add_argument("--resources", default=None, help="comma list (default: all five)")
    p.add_argument(
        "--joint", default=None, help="scale together: hbm_bw,flops or hbm_bw:1,flops:0.5"
    )
    p.add_argument(
        "--others",
        type=_positive_float("others"),
        default=1.0,
        help="factor on the resources not being solved for (1 = reference)",
    )
    p.add_argument("--constraints", default="ttft,tpot,memory,rate")
    p.add_argument("--lo", type=_positive_float("lo"), default=1e-3, help="bracket low factor")
    p.add_argument("--hi", type=_positive_float("hi"), default=1e4, help="bracket high factor")
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("sweep", help="sharded, streamed sweep over a design space")
    p.add_argument("--config", default=None, help="design space TOML/JSON")
    p.add_argument(
        "--pipeline",
        default=None,
        help="pipeline TOML or example name: sweep its float leaves (--axis "
        "stages.NAME.batch_size=lin:1:64:8, engines.NAME.count=...)",
    )
    p.add_argument("--axis", action="append", default=[], help="NAME=log:A:B:N | lin:... | v1,v2")
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--hardware", default="h100-sxm")
    p.add_argument("--scheme", default="aggregated")
    p.add_argument("--workload", default=None, help="preset or TOML (flag mode)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--outputs", default=None, help="comma list of Metrics fields")
    p.add_argument("--output", default=None, help="rows to .csv or .parquet")
    p.add_argument("--chunk", type=_positive_int("chunk"), default=None)
    p.add_argument("--plot", default=None, help="PNG of the first output (or --plot-metric)")
    p.add_argument("--plot-metric", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)
