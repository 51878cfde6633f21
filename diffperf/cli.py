"""Command-line interface: the only module that parses flags and prints."""

import argparse
import json
import os
import sys
import time


# Command groups that keep their flag parsing in their own edge module: each has
# ``register(subparsers)``, adding parsers whose ``func`` returns an exit code.
_COMMAND_MODULES: tuple[str, ...] = (
    "._cli_calibrate",
    "._cli_optimize",
    "._cli_explore",
    "._cli_pipeline",
)


def _positive_int(name):
    def conv(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name} = {s!r} is not an integer") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"--{name} = {v} must be a positive integer")
        return v

    return conv


def _positive_float(name, allow_zero=False):
    def conv(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name} = {s!r} is not a number") from None
        if not (v > 0 or (allow_zero and v == 0)) or v != v or v == float("inf"):
            need = "non-negative" if allow_zero else "positive"
            raise argparse.ArgumentTypeError(f"--{name} = {s} must be a finite {need} number")
        return v

    return conv


# --------------------------------------------------------------------------------------------
# estimate
# --------------------------------------------------------------------------------------------


def _add_plan_flags(p: argparse.ArgumentParser):
    p.add_argument("--model", default="llama-3.1-8b", help="preset name, HF repo id or config.json")
    p.add_argument("--hardware", default="h100-sxm", help="preset name or TOML file")
    p.add_argument("--tp", type=_positive_int("tp"), default=1, help="tensor parallel degree")
    p.add_argument("--pp", type=_positive_int("pp"), default=1, help="pipeline stages")
    p.add_argument("--dp", type=_positive_int("dp"), default=1, help="attention data parallel")
    p.add_argument("--ep", type=_positive_int("ep"), default=None, help="expert parallel degree")
    p.add_argument("--moe-tp", type=_positive_int("moe-tp"), default=None, help="expert TP")
    p.add_argument("--dtype", default=None, help="weight/GEMM format (default: model's)")
    p.add_argument("--kv-dtype", default=None, help="KV-cache format (default bf16)")
    p.add_argument("--moe-dtype", default=None, help="expert weight format")


def _build(args):
    from .hardware import load_hardware
    from .model import load_model
    from .stages import make_plan

    hw = load_hardware(args.hardware)
    model = load_model(args.model)
    plan = make_plan(
        model,
        tp=args.tp,
        pp=args.pp,
        dp=args.dp,
        ep=args.ep,
        moe_tp=args.moe_tp,
        dtype=args.dtype,
        moe_dtype=args.moe_dtype,
        kv_dtype=args.kv_dtype,
    )
    return hw, model, plan


def estimate_report(args) -> dict:
    """Run ``estimate`` for parsed CLI arguments and return the JSON-ready report."""
    import equinox as eqx

    from ._report import module_to_dict, to_float
    from .stages import estimate

    hw, model, plan = _build(args)
    t0 = time.perf_counter()
    res = eqx.filter_jit(estimate)(
        hw,
        model,
        plan,
        float(args.batch),
        float(args.isl),
        float(args.osl),
        float(args.max_num_tokens),
    )
    mem = res.memory
    report = {
        "model": model.name,
        "hardware": hw.name,
        "plan": {
            "tp": args.tp,
            "pp": args.pp,
            "dp": args.dp,
            "ep": int(to_float(plan.ep)),
            "moe_tp": int(to_float(plan.moe_tp)),
            "dtype": plan.weight_dtype,
            "moe_dtype": plan.moe_dtype,
            "kv_dtype": plan.kv_dtype,
        },
        "batch": args.batch,
        "isl": args.isl,
        "osl": args.osl,
        "devices": to_float(res.devices),
        "max_num_tokens": args.max_num_tokens,
        "prefill_latency_s": to_float(res.prefill_latency_s),
        "prefill_iteration_s": to_float(res.prefill.latency_s),
        "ttft_s": to_float(res.ttft_s),
        "tpot_s": to_float(res.tpot_s),
        "e2e_latency_s": to_float(res.e2e_latency_s),
        "throughput_tok_s": to_float(res.throughput_tok_s),
        "throughput_tok_s_per_device": to_float(res.throughput_tok_s_per_device),
        "throughput_tok_s_per_user": to_float(res.throughput_tok_s_per_user),
        "e2e_throughput_tok_s": to_float(res.e2e_throughput_tok_s),
        "memory_per_device": {
            "weight_bytes": to_float(mem.weight_bytes),
            "kv_cache_bytes": to_float(mem.kv_cache_bytes),
            "activation_bytes": to_float(mem.activation_bytes),
            "total_bytes": to_float(mem.total_bytes),
            "capacity_bytes": to_float(mem.capacity_bytes),
            "margin_bytes": to_float(mem.margin_bytes),
        },
        "fits": bool(to_float(mem.margin_bytes) >= 0),
        "breakdown": {
            "prefill": module_to_dict(res.prefill.breakdown),
            "decode": module_to_dict(res.decode.breakdown),
        },
        "wall_s": time.perf_counter() - t0,
    }
    return report


def _print_estimate(r: dict):
    from ._report import fmt_bytes, fmt_time, table

    p = r["plan"]
    print(
        f"{r['model']} on {r['devices']:.0f} x {r['hardware']}  (tp={p['tp']} pp={p['pp']} "
        f"dp={p['dp']} ep={p['ep']} moe_tp={p['moe_tp']}; weights {p['dtype']}, "
        f"experts {p['moe_dtype']}, KV {p['kv_dtype']})"
    )
    print(f"batch {r['batch']}, ISL {r['isl']}, OSL {r['osl']}\n")
    rows = [
        ["prefill of the whole batch", fmt_time(r["prefill_latency_s"])],
        ["TTFT (mean over the batch)", fmt_time(r["ttft_s"])],
        ["TPOT (mean decode step)", fmt_time(r["tpot_s"])],
        ["end-to-end latency", fmt_time(r["e2e_latency_s"])],
        ["output tokens/s (decode, system)", f"{r['throughput_tok_s']:.1f}"],
        ["output tokens/s per device", f"{r['throughput_tok_s_per_device']:.1f}"],
        ["output tokens/s per user", f"{r['throughput_tok_s_per_user']:.1f}"],
        ["output tokens/s incl. prefill", f"{r['e2e_throughput_tok_s']:.1f}"],
    ]
    print(table(rows, ["metric", "value"]))
    m = r["memory_per_device"]
    print()
    rows = [
        ["weights", fmt_bytes(m["weight_bytes"])],
        ["KV cache (end of generation)", fmt_bytes(m["kv_cache_bytes"])],
        ["activations (peak)", fmt_bytes(m["activation_bytes"])],
        ["total", fmt_bytes(m["total_bytes"])],
        ["usable capacity", fmt_bytes(m["capacity_bytes"])],
        ["margin", fmt_bytes(m["margin_bytes"])],
    ]
    print(table(rows, ["memory per device", "bytes"]))
    print("fits in memory: " + ("yes" if r["fits"] else "NO"))
    print()
    bd_p, bd_d = r["breakdown"]["prefill"], r["breakdown"]["decode"]
    rows = [[k.removesuffix("_s"), fmt_time(bd_p[k]), fmt_time(bd_d[k])] for k in bd_p]
    print(table(rows, ["component", "prefill", "decode step"]))


def cmd_estimate(args) -> int:
    from ._report import fmt_bytes

    r = estimate_report(args)
    if not r["fits"] and not args.ignore_memory:
        m = r["memory_per_device"]
        raise ValueError(
            f"{r['model']} does not fit on {r['hardware']} with this plan: it needs "
            f"{fmt_bytes(m['total_bytes'])} per device (weights {fmt_bytes(m['weight_bytes'])}, "
            f"KV cache {fmt_bytes(m['kv_cache_bytes'])}, activations "
            f"{fmt_bytes(m['activation_bytes'])}) but memory.hbm_capacity_gb x "
            f"usable_fraction = {fmt_bytes(m['capacity_bytes'])}; raise --tp/--pp/--ep, lower "
            f"--batch, or pass --ignore-memory to report the timings anyway"
        )
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        _print_estimate(r)
    return 0


# --------------------------------------------------------------------------------------------
# kernels / validate
# --------------------------------------------------------------------------------------------


def _read_inputs(paths):
    from .calibrate import concat_tables, read_kernel_csv

    return concat_tables([read_kernel_csv(p) for p in paths])


def _hw_lookup(override):
    from .hardware import load_hardware

    if override:
        hw = load_hardware(override)
        return hw
    cache = {}

    def get(dev):
        if dev not in cache:
            cache[dev] = load_hardware(dev)
        return cache[dev]

    return get


def cmd_kernels(args) -> int:
    from .calibrate import predict_table, write_csv

    t0 = time.perf_counter()
    cols = _read_inputs(args.input)
    pred = predict_table(_hw_lookup(args.hardware), cols)
    write_csv(args.output, cols, {"predicted_latency_s": pred})
    wall = time.perf_counter() - t0
    msg = {"rows": int(len(pred)), "output": args.output, "wall_s": wall}
    print(
        json.dumps(msg) if args.json else f"wrote {len(pred)} rows to {args.output} in {wall:.2f} s"
    )
    return 0


def cmd_validate(args) -> int:
    from ._report import table
    from .calibrate import error_table, predict_table

    cols = _read_inputs(args.input)
    if args.device:
        import numpy as np

        from .calibrate import select_rows

        cols = select_rows(cols, np.asarray(cols["device"]) == args.device)
        if not len(cols["op"]):
            raise ValueError(f"--device {args.device!r}: no rows with that device")
    pred = predict_table(_hw_lookup(args.hardware), cols)
    keys = ("device", "op", "dtype") + tuple(args.by or ())
    rows = error_table(cols, pred, keys)
    if args.plot:
        from .plot import scatter_pred_vs_meas

        scatter_pred_vs_meas(cols, pred, args.plot)
    if args.json:
        print(json.dumps({"groups": rows}, indent=2))
        return 0
    print(
        table(
            [
                [
                    *(r[k] for k in keys),
                    str(r["rows"]),
                    f"{100 * r['median_abs_rel_err']:.1f}%",
                    f"{100 * r['p90_abs_rel_err']:.1f}%",
                    f"{100 * r['bias']:+.1f}%",
                ]
                for r in rows
            ],
            [*keys, "rows", "median |err|", "p90 |err|", "bias"],
        )
    )
    if args.plot:
        print(f"\nscatter plot written to {args.plot}")
    return 0


def cmd_presets(args) -> int:
    from .hardware import list_presets
    from .model import list_models

    out = {"hardware": list_presets(), "models": list_models()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print("hardware presets: " + ", ".join(out["hardware"]))
        print("models: " + ", ".join(out["models"]))
    return 0


# --------------------------------------------------------------------------------------------
# serve / compare
# --------------------------------------------------------------------------------------------


def _workload_from_args(args, require_load: bool):
    """Workload from --workload (preset/TOML, optional) and the per-field flags."""
    from .deploy import Workload, WorkloadError, load_workload

    if args.concurrency is not None and args.rate is not None:
        raise ValueError(
            "--concurrency and --rate are mutually exclusive (closed-loop clients or open-loop "
            "arrivals); give one"
        )
    if args.prefix_hit is not None and not (0.0 <= args.prefix_hit <= 0.999):
        raise ValueError(f"--prefix-hit = {args.prefix_hit:g} must be in [0, 0.999]")
    for flag, v in (("--isl", args.isl), ("--osl", args.osl)):
        if v is not None and v < 1:
            raise ValueError(f"{flag} = {v} must be a positive integer")
    for flag, v in (
        ("--concurrency", args.concurrency),
        ("--rate", args.rate),
        ("--ttft-slo", args.ttft_slo),
        ("--tpot-slo", args.tpot_slo),
    ):
        if v is not None and not (v > 0 and v < float("inf")):
            raise ValueError(f"{flag} = {v:g} must be a finite positive number")
    if args.workload is None:
        if args.isl is None or args.osl is None:
            raise ValueError("give --isl and --osl (or --workload NAME)")
        if require_load and args.concurrency is None and args.rate is None:
            raise ValueError("give --concurrency N (closed loop) or --rate R (requests/s)")
        base = Workload(isl_tokens=float(args.isl), osl_tokens=float(args.osl))
    else:
        base = args.workload
    overrides = dict(
        isl_tokens=args.isl,
        osl_tokens=args.osl,
        prefix_hit_rate=args.prefix_hit,
        concurrency=args.concurrency,
        arrival_rate_per_s=args.rate,
        ttft_slo_s=args.ttft_slo,
        tpot_slo_s=args.tpot_slo,
        slo_percentile=args.percentile,
    )
    try:
        return load_workload(base, **overrides)
    except WorkloadError as e:
        raise ValueError(f"workload: {e}") from None


def _workload_dict(w) -> dict:
    from ._report import to_float

    return {
        "name": w.name,
        "isl_tokens": to_float(w.isl_tokens),
        "osl_tokens": to_float(w.osl_tokens),
        "prefix_hit_rate": to_float(w.prefix_hit_rate),
        "load_mode": w.load_mode,
        "concurrency": to_float(w.concurrency) if w.load_mode == "closed" else None,
        "arrival_rate_per_s": to_float(w.arrival_rate_per_s) if w.load_mode == "open" else None,
        "ttft_slo_s": to_float(w.slo.ttft_s),
        "tpot_slo_s": to_float(w.slo.tpot_s),
        "slo_percentile": w.slo.percentile,
    }


def _plan_row(model, prefix: str, flag: str, tp, pp, dp, ep, moe_tp, dtypes) -> dict:
    """Validated plan degrees (make_plan's defaults and rules); errors name the flags."""
    from .stages import PlanError, make_plan

    try:
        plan = make_plan(
            model,
            tp=tp,
            pp=pp,
            dp=dp,
            ep=ep,
            moe_tp=moe_tp,
            dtype=dtypes[0],
            moe_dtype=dtypes[1],
            kv_dtype=dtypes[2],
        )
    except PlanError as e:
        raise ValueError(f"{flag}: {e}") from None
    from ._report import to_float

    return {
        prefix + k: int(round(to_float(getattr(plan, k))))
        for k in ("tp", "dp", "pp", "ep", "moe_tp")
    }


def _serve_row(args, model):
    """(scheme, row of the design table, dtypes, pool hardware) from the serve flags."""
    from .hardware import load_hardware
    from .search import afd_shape_error, canonical_scheme, default_dtypes

    try:
        scheme = canonical_scheme(args.scheme)
    except ValueError:
        raise ValueError(
            f"--scheme = {args.scheme!r} must be one of aggregated, disaggregated, afd"
        ) from None
    dtypes = default_dtypes(model, args.dtype, args.moe_dtype, args.kv_dtype)
    pools = {}
    row: dict = {"max_num_tokens": float(args.max_num_tokens)}

    def degs(prefix):
        get = lambda k, default: (
            getattr(args, f"{prefix}_{k}")
            if getattr(args, f"{prefix}_{k}") is not None
            else default
        )
        return (
            get("tp", args.tp),
            get("pp", args.pp),
            get("dp", args.dp),
            get("ep", args.ep),
            get("moe_tp", args.moe_tp),
        )

    if scheme == "aggregated":
        row.update(
            _plan_row(
                model,
                "",
                "--tp/--pp/--dp/--ep/--moe-tp",
                *(args.tp, args.pp, args.dp, args.ep, args.moe_tp),
                dtypes,
            )
        )
        inst = args.workers or 1
        row.update(instances=inst, max_batch=args.batch or 256)
        row["total_devices"] = inst * row["tp"] * row["dp"] * row["pp"]
        row["concurrency"] = 0
        return scheme, row, dtypes, pools
    row.update(
        _plan_row(
            model, "prefill_", "--prefill-tp/--prefill-dp/--prefill-ep", *degs("prefill"), dtypes
        )
    )
    pdev = row["prefill_tp"] * row["prefill_dp"] * row["prefill_pp"]
    px = args.prefill_workers or 1
    row.update(prefill_instances=px, prefill_max_batch=args.prefill_batch or 1)
    if scheme == "disaggregated":
        row.update(
            _plan_row(
                model, "decode_", "--decode-tp/--decode-dp/--decode-ep", *degs("decode"), dtypes
            )
        )
        dx = args.decode_workers or 1
        row.update(decode_instances=dx, decode_max_batch=args.decode_batch or 256)
        row["total_devices"] = (
            px * pdev + dx * row["decode_tp"] * row["decode_dp"] * row["decode_pp"]
        )
        if args.decode_hardware:
            pools["decode"] = load_hardware(args.decode_hardware)
        row["concurrency"] = 0
        return scheme, row, dtypes, pools
    # AFD
    if not model.has_moe:
        raise ValueError(
            f"--scheme afd needs a MoE model: attention-FFN disaggregation splits the experts "
            f"off the attention devices, and {model.name} has no MoE layers"
        )
    a = args.attention_devices
    f = args.ffn_devices
    if a is None or f is None:
        raise ValueError("--scheme afd needs --attention-devices and --ffn-devices")
    atp, ftp = args.attention_tp, args.ffn_moe_tp
    err = afd_shape_error(model, a, atp, f, ftp)
    if err:
        raise ValueError(f"--attention-devices/--attention-tp/--ffn-devices/--ffn-moe-tp: {err}")
    units = args.decode_workers or 1
    row.update(
        attention_devices=a,
        attention_tp=atp,
        ffn_devices=f,
        ffn_moe_tp=ftp,
        microbatches=args.microbatches,
        decode_batch=args.decode_batch or 256,
        instances=units,
        unit_devices=a + f,
        total_devices=px * pdev + units * (a + f),
        concurrency=0,
    )
    if args.attention_hardware:
        pools["attention"] = load_hardware(args.attention_hardware)
    if args.ffn_hardware:
        pools["ffn"] = load_hardware(args.ffn_hardware)
    return scheme, row, dtypes, pools


def serve_report(args) -> dict:
    """Run ``serve --scheme`` for parsed arguments and return the JSON-ready report."""
    import equinox as eqx

    from .deploy import evaluate, metrics_to_dict
    from .hardware import load_hardware
    from .model import load_model
    from .search import GridTable, deployment_dict, make_deployment, scheme_class

    workload = _workload_from_args(args, require_load=True)
    hw = load_hardware(args.hardware or "h100-sxm")
    model = load_model(args.model or "llama-3.1-8b")
    scheme, row, dtypes, pools = _serve_row(args, model)
    try:
        scheme_class(scheme)
    except ImportError as e:
        raise ValueError(f"--scheme {scheme} is not available in this build ({e})") from None
    import numpy as np

    t0 = time.perf_counter()
    deploy = make_deployment(scheme, {k: float(v) for k, v in row.items()}, dtypes, pools)
    m = eqx.filter_jit(evaluate)(hw, model, deploy, workload)
    wall = time.perf_counter() - t0
    if workload.load_mode == "closed":
        row["concurrency"] = workload.concurrency
    table = GridTable(scheme, {k: np.asarray([v]) for k, v in row.items()}, dtypes, 1)
    r = {"scheme": scheme, "model": model.name, "hardware": hw.name}
    r.update(metrics_to_dict(m))
    r["deployment"] = deployment_dict(table, 0)
    if workload.load_mode == "open":
        r["deployment"].pop("concurrency")
    r["workload"] = _workload_dict(workload)
    r["wall_s"] = wall
    return r


def _fmt_deployment(d: dict) -> str:
    def plan(p):
        s = f"tp{p['tp']}"
        for k in ("dp", "pp", "ep", "moe_tp"):
            if p[k] != 1:
                s += f" {k}{p[k]}"
        return s

    if d["scheme"] == "aggregated":
        return f"{d['instances']} x [{plan(d['plan'])}] batch {d['max_batch']}"
    pre = f"P {d['prefill_instances']} x [{plan(d['prefill_plan'])}] batch {d['prefill_max_batch']}"
    if d["scheme"] == "disaggregated":
        return (
            f"{pre}; D {d['decode_instances']} x [{plan(d['decode_plan'])}] "
            f"batch {d['decode_max_batch']}"
        )
    return (
        f"{pre}; {d['instances']} x [A{d['attention_devices']} (tp{d['attention_tp']}) + "
        f"F{d['ffn_devices']} (moe_tp{d['ffn_moe_tp']})] m{d['microbatches']} "
        f"batch {d['decode_batch']}"
    )


def _print_serve(r: dict):
    from ._report import fmt_time, table

    w = r["workload"]
    load = (
        f"{w['concurrency']:g} clients"
        if w["load_mode"] == "closed"
        else f"{w['arrival_rate_per_s']:g} req/s"
    )
    print(
        f"{r['model']} on {r['devices']:.0f} x {r['hardware']}, {r['scheme']}: "
        f"{_fmt_deployment(r['deployment'])}"
    )
    print(
        f"ISL {w['isl_tokens']:g} (prefix hit {w['prefix_hit_rate']:g}), OSL "
        f"{w['osl_tokens']:g}, {load}\n"
    )
    pct = w["slo_percentile"]
    rows = [["TTFT (mean)", fmt_time(r["ttft_s"])]]
    if pct != "mean":
        rows.append([f"TTFT ({pct})", fmt_time(r["ttft_pct_s"])])
    rows.append(["TPOT (mean)", fmt_time(r["tpot_s"])])
    if pct != "mean":
        rows.append([f"TPOT ({pct})", fmt_time(r["tpot_pct_s"])])
    rows += [
        ["request latency (mean)", fmt_time(r["request_latency_s"])],
        ["output tokens/s (system)", f"{r['throughput_tok_s']:.1f}"],
        ["output tokens/s per device", f"{r['throughput_tok_s_per_device']:.1f}"],
        ["output tokens/s per user", f"{r['throughput_tok_s_per_user']:.1f}"],
        ["utilisation", f"{r['utilisation']:.2f}"],
        ["memory margin", f"{100 * r['memory_margin_frac']:.0f}%"],
    ]
    print(table(rows, ["metric", "value"]))
    print("\nfeasible: " + ("yes" if r["feasible"] else f"NO ({r['reason']})"))


def _serve_table(args) -> int:
    import csv

    from .deploy._served_runs import predict_served_runs, read_served_csv
    from .hardware import load_hardware

    if not args.output:
        raise ValueError("--input needs --output OUT.csv")
    t0 = time.perf_counter()
    cols = read_served_csv(args.input)
    hw = load_hardware(args.hardware) if args.hardware else None
    ttft, tpot = predict_served_runs(cols, hardware_override=hw)
    with open(args.input, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = [r for r in reader]
    if len(rows) != len(ttft):
        raise ValueError(f"{args.input}: read {len(rows)} rows but predicted {len(ttft)}")
    extra = ["predicted_ttft_ms", "predicted_tpot_ms"]
    keep = [i for i, h in enumerate(header) if h not in extra]
    with open(args.output, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow([header[i] for i in keep] + extra)
        for r, a, b in zip(rows, ttft, tpot):
            r = r + [""] * (len(header) - len(r))
            wr.writerow([r[i] for i in keep] + [f"{1e3 * a:.6g}", f"{1e3 * b:.6g}"])
    wall = time.perf_counter() - t0
    msg = {"rows": len(rows), "output": args.output, "wall_s": wall}
    print(
        json.dumps(msg) if args.json else f"wrote {len(rows)} rows to {args.output} in {wall:.2f} s"
    )
    return 0


def cmd_serve(args) -> int:
    if args.input:
        if args.scheme:
            raise ValueError("--input evaluates a table of runs; do not combine it with --scheme")
        return _serve_table(args)
    if not args.scheme:
        raise ValueError("give --scheme aggregated|disaggregated|afd (or --input RUNS.csv)")
    r = serve_report(args)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        _print_serve(r)
    return 0


def search_inputs(args):
    """``(workload, hw, model, schemes, space, dtypes)`` from the flags ``compare`` and
    ``optimize`` share (default workload ``chat`` unless ISL and OSL are both given)."""
    from .hardware import load_hardware
    from .model import load_model
    from .search import GridSpace, canonical_scheme, default_dtypes, geometric_ladder

    if args.workload is None and (args.isl is None or args.osl is None):
        args.workload = "chat"
    workload = _workload_from_args(args, require_load=False)
    hw = load_hardware(args.hardware)
    model = load_model(args.model)
    try:
        schemes = [
            canonical_scheme(s)
            for s in (args.schemes or "aggregated,disaggregated,afd").split(",")
            if s.strip()
        ]
    except ValueError:
        raise ValueError(
            f"--schemes = {args.schemes!r} must list aggregated, disaggregated and/or afd"
        ) from None
    fixed_load = args.concurrency is not None or args.rate is not None
    space = GridSpace(
        batch_ladder=geometric_ladder(1, args.max_batch),
        max_pp=args.max_pp,
        max_num_tokens=float(args.max_num_tokens),
        load="workload" if fixed_load else "saturate",
    )
    dtypes = default_dtypes(model, args.dtype, args.moe_dtype, args.kv_dtype)
    return workload, hw, model, schemes, space, dtypes


def compare_report(args) -> dict:
    """Run ``compare`` for parsed arguments and return the JSON-ready report."""
    from .search import applicable_schemes, grid_search

    workload, hw, model, schemes, space, dtypes = search_inputs(args)
    skipped = applicable_schemes(model, schemes)
    t0 = time.perf_counter()
    results = grid_search(
        hw, model, args.devices, workload, [s for s in schemes if s not in skipped], space, dtypes
    )
    wall = time.perf_counter() - t0
    out_schemes = {}
    for s in schemes:
        if s in skipped:
            out_schemes[s] = {"best": None, "plans": 0, "feasible": 0, "reason": skipped[s]}
        else:
            out_schemes[s] = results[s].summary(pareto=True)
    cands = [(s, v["best"]) for s, v in out_schemes.items() if v["best"] is not None]
    best = None
    if cands:
        s, b = max(cands, key=lambda sb: sb[1]["throughput_tok_s_per_device"])
        best = {"scheme": s, **b}
    rep = {
        "model": model.name,
        "hardware": hw.name,
        "devices": args.devices,
        "workload": _workload_dict(workload),
        "load": space.load,
        "best": best,
        "reason": "" if best else "no scheme has a design that meets the SLOs",
        "schemes": out_schemes,
        "plans": int(sum(v.get("plans", 0) for v in out_schemes.values())),
        "wall_s": wall,
    }
    if args.plot:
        from .plot import pareto_frontiers

        series = {}
        for s, res in results.items():
            m = res.metrics
            ok = (m.memory_ok > 0.5) & (m.rate_ok > 0.5)
            series[s] = {
                "x": m.throughput_tok_s_per_user[ok],
                "y": m.throughput_tok_s_per_device[ok],
                "frontier_x": m.throughput_tok_s_per_user[res.pareto],
                "frontier_y": m.throughput_tok_s_per_device[res.pareto],
            }
        slo = rep["workload"]["tpot_slo_s"]
        pareto_frontiers(
            series,
            args.plot,
            min_tok_s_per_user=1.0 / slo if slo < 1e6 else None,
            title=f"{model.name} on {args.devices} x {hw.name}, {workload.name}",
        )
        rep["plot"] = args.plot
    return rep


def _print_compare(r: dict):
    from ._report import fmt_time, table

    w = r["workload"]
    print(
        f"{r['model']} on {r['devices']} x {r['hardware']}; workload {w['name']}: ISL "
        f"{w['isl_tokens']:g}, OSL {w['osl_tokens']:g}, prefix hit {w['prefix_hit_rate']:g}; "
        f"SLO ({w['slo_percentile']}) TTFT {w['ttft_slo_s']:g} s, TPOT "
        f"{1e3 * w['tpot_slo_s']:g} ms; load: "
        + ("each design saturated" if r["load"] == "saturate" else "the workload's")
        + "\n"
    )
    rows = []
    for s, v in r["schemes"].items():
        b = v["best"]
        if b is None:
            rows.append(
                [
                    s,
                    str(v.get("plans", 0)),
                    str(v.get("feasible", 0)),
                    "-",
                    "-",
                    "-",
                    "-",
                    v["reason"],
                ]
            )
            continue
        rows.append(
            [
                s,
                str(v["plans"]),
                str(v["feasible"]),
                f"{b['throughput_tok_s_per_device']:.1f}",
                f"{b['throughput_tok_s_per_user']:.1f}",
                fmt_time(b["ttft_pct_s"]),
                fmt_time(b["tpot_pct_s"]),
                _fmt_deployment(b["deployment"]),
            ]
        )
    print(
        table(
            rows,
            [
                "scheme",
                "plans",
                "feasible",
                "tok/s/dev",
                "tok/s/user",
                "TTFT",
                "TPOT",
                "best deployment (or why none)",
            ],
        )
    )
    b = r["best"]
    print()
    if b is None:
        print("no scheme meets the SLOs")
    else:
        print(
            f"best: {b['scheme']}, {b['throughput_tok_s_per_device']:.1f} tok/s/device at "
            f"{b['throughput_tok_s_per_user']:.1f} tok/s/user"
        )
    print(f"{r['plans']} designs evaluated in {r['wall_s']:.2f} s")
    if r.get("plot"):
        print(f"Pareto plot written to {r['plot']}")


def cmd_compare(args) -> int:
    if args.devices < 1:
        raise ValueError(f"--devices = {args.devices} must be a positive integer")
    r = compare_report(args)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        _print_compare(r)
    return 0


def _add_workload_flags(p: argparse.ArgumentParser):
    p.add_argument("--workload", default=None, help="workload preset (chat, coding, ...) or TOML")
    p.add_argument("--isl", type=int, default=None, help="mean input tokens")
    p.add_argument("--osl", type=int, default=None, help="mean output tokens")
    p.add_argument("--concurrency", type=float, default=None, help="closed-loop clients")
    p.add_argument("--rate", type=float, default=None, help="open-loop requests/s")
    p.add_argument("--prefix-hit", type=float, default=None, help="prefix-cache hit rate [0,1)")
    p.add_argument("--ttft-slo", type=float, default=None, help="TTFT target (s)")
    p.add_argument("--tpot-slo", type=float, default=None, help="TPOT target (s)")
    p.add_argument(
        "--percentile",
        default=None,
        choices=["mean", "p50", "p90", "p95", "p99"],
        help="statistic the SLOs bind",
    )


def add_search_space_flags(p: argparse.ArgumentParser):
    """The deployment-space and workload flags ``compare`` and ``optimize`` share."""
    p.add_argument("--schemes", default=None, help="comma list (default all three)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--kv-dtype", default=None)
    p.add_argument("--moe-dtype", default=None)
    p.add_argument("--max-pp", type=_positive_int("max-pp"), default=1)
    p.add_argument(
        "--max-batch",
        type=_positive_int("max-batch"),
        default=1024,
        help="top of the batch ladder 1, 2, 4, ...",
    )
    p.add_argument("--max-num-tokens", type=_positive_int("max-num-tokens"), default=8192)
    _add_workload_flags(p)


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="diffperf", description="Differentiable performance model of LLM serving."
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("estimate", help="one model on one platform with a parallel plan")
    _add_plan_flags(p)
    p.add_argument("--batch", type=_positive_int("batch"), default=8)
    p.add_argument("--isl", type=_positive_int("isl"), default=1024, help="input tokens")
    p.add_argument("--osl", type=_positive_int("osl"), default=256, help="output tokens")
    p.add_argument(
        "--max-num-tokens",
        type=_positive_int("max-num-tokens"),
        default=8192,
        help="prefill token budget per iteration and attention replica",
    )
    p.add_argument(
        "--ignore-memory", action="store_true", help="report timings even if it does not fit"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("kernels", help="predict every row of measured-kernel CSVs")
    p.add_argument("--input", action="append", required=True, help="CSV (repeatable)")
    p.add_argument("--output", required=True)
    p.add_argument("--hardware", default=None, help="override the device column")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_kernels)

    p = sub.add_parser("validate", help="error of predictions against measured tables")
    p.add_argument("--input", action="append", required=True, help="CSV (repeatable)")
    p.add_argument("--hardware", default=None, help="override the device column")
    p.add_argument("--device", default=None, help="only rows whose device column is this")
    p.add_argument("--by", action="append", help="extra grouping column (e.g. scope)")
    p.add_argument("--plot", default=None, help="write a predicted-vs-measured scatter PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("serve", help="serve a workload with one deployment of a scheme")
    p.add_argument("--scheme", default=None, help="aggregated | disaggregated | afd")
    p.add_argument("--input", default=None, help="e2e runs CSV: predict every row")
    p.add_argument("--output", default=None, help="CSV written with predicted_ttft/tpot_ms")
    p.add_argument("--model", default=None, help="preset name, HF repo id or config.json")
    p.add_argument("--hardware", default=None, help="preset or TOML (with --input: override)")
    for k in ("tp", "pp", "dp"):
        p.add_argument(f"--{k}", type=_positive_int(k), default=1)
    p.add_argument("--ep", type=_positive_int("ep"), default=None)
    p.add_argument("--moe-tp", type=_positive_int("moe-tp"), default=None)
    p.add_argument("--dtype", default=None, help="weight/GEMM format (default: model's)")
    p.add_argument("--kv-dtype", default=None, help="KV-cache format (default bf16)")
    p.add_argument("--moe-dtype", default=None, help="expert weight format")
    p.add_argument(
        "--workers", type=_positive_int("workers"), default=None, help="aggregated: model instances"
    )
    p.add_argument(
        "--batch",
        type=_positive_int("batch"),
        default=None,
        help="aggregated: max running sequences per instance (256)",
    )
    p.add_argument("--max-num-tokens", type=_positive_int("max-num-tokens"), default=8192)
    for pool in ("prefill", "decode"):
        p.add_argument(
            f"--{pool}-workers",
            type=_positive_int(f"{pool}-workers"),
            default=None,
            help=f"{pool} instances" + (" (AFD: attention-FFN units)" if pool == "decode" else ""),
        )
        for k in ("tp", "pp", "dp", "ep", "moe-tp"):
            p.add_argument(
                f"--{pool}-{k}",
                type=_positive_int(f"{pool}-{k}"),
                default=None,
                help=f"{pool} plan (default: --{k})",
            )
        p.add_argument(
            f"--{pool}-batch",
            type=_positive_int(f"{pool}-batch"),
            default=None,
            help=f"{pool} batch limit per instance",
        )
    p.add_argument("--decode-hardware", default=None, help="decode pool hardware (P/D)")
    p.add_argument("--attention-devices", type=_positive_int("attention-devices"), default=None)
    p.add_argument("--ffn-devices", type=_positive_int("ffn-devices"), default=None)
    p.add_argument("--attention-tp", type=_positive_int("attention-tp"), default=1)
    p.add_argument("--ffn-moe-tp", type=_positive_int("ffn-moe-tp"), default=1)
    p.add_argument("--microbatches", type=_positive_int("microbatches"), default=2)
    p.add_argument("--attention-hardware", default=None)
    p.add_argument("--ffn-hardware", default=None)
    _add_workload_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("compare", help="best deployment of each scheme on N devices (grid)")
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--hardware", default="h100-sxm")
    p.add_argument("--devices", type=int, required=True, help="device budget (all used)")
    add_search_space_flags(p)
    p.add_argument("--plot", default=None, help="write the Pareto frontier PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("presets", help="list hardware presets and models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)

    import importlib

    for mod in _COMMAND_MODULES:
        importlib.import_module(mod, __package__).register(sub)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"diffperf: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0


def enable_compilation_cache() -> str | None:
    """Keep XLA's compiled programs on disk across runs (the console command only).

    A search or sweep compiles its gradient once per model/scheme/shape (~1-2 min on 2 CPU
    cores); with the cache a second run with the same shapes loads it instead. Directory:
    ``$DIFFPERF_CACHE_DIR``, else ``$XDG_CACHE_HOME/diffperf/jax`` (``~/.cache/...``);
    ``DIFFPERF_CACHE_DIR=off`` disables it. Returns the directory used, or None.
    """
    where = os.environ.get("DIFFPERF_CACHE_DIR")
    if where is not None and where.strip().lower() in ("", "off", "0", "none"):
        return None
    if not where:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = os.path.join(base, "diffperf", "jax")
    try:
        os.makedirs(where, exist_ok=True)
    except OSError:  # read-only home: run without the cache rather than fail
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return where


def entry() -> int:
    """The ``diffperf`` console command: :func:`main` with the on-disk compilation cache."""
    enable_compilation_cache()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
