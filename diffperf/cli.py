"""Command-line interface: the only module that parses flags and prints."""

import argparse
import json
import sys
import time


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
    p.add_argument("--by", action="append", help="extra grouping column (e.g. scope)")
    p.add_argument("--plot", default=None, help="write a predicted-vs-measured scatter PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("presets", help="list hardware presets and models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)
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


if __name__ == "__main__":
    sys.exit(main())
