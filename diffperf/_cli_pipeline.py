"""CLI edge for `diffperf pipeline`: evaluate a multi-stage pipeline from a TOML file."""

import json


def _fmt_table(rep: dict) -> str:
    head = (
        f"{'stage':<14}{'type':<13}{'engine':<8}{'batching':<11}{'inst':>6}{'batch':>7}"
        f"{'service ms':>12}{'wait ms':>10}{'latency ms':>12}{'cap /s':>10}{'util':>7}"
    )
    lines = [head, "-" * len(head)]
    for s in rep["stages"]:
        lines.append(
            f"{s['name']:<14}{s['type']:<13}{s['engine']:<8}{s['batching']:<11}"
            f"{s['instances']:>6.2f}{s['batch']:>7.2f}{s['service_ms']:>12.2f}"
            f"{s['wait_ms']:>10.2f}{s['latency_ms']:>12.2f}{s['capacity_per_s']:>10.3g}"
            f"{s['utilisation']:>7.2f}"
        )
    slo = rep["slo"]
    lines += [
        "",
        f"throughput   {rep['throughput_per_s']:.4g} requests/s (bottleneck: {rep['bottleneck']}),"
        f" {rep['throughput_per_device']:.4g} per device over {rep['devices']:g} devices",
        f"offered load {rep['arrival_rate_per_s']:.4g} requests/s",
        f"e2e latency  {rep['e2e_latency_ms']:.1f} ms (mean; SLO {slo['e2e_ms']:g} ms)",
        f"TTFT         {rep['ttft_ms']:.1f} ms (mean; SLO {slo['ttft_ms']:g} ms)",
        f"feasible     {rep['feasible']}   meets SLO {rep['meets_slo']}",
    ]
    return "\n".join(lines)


def _plot(rep: dict, out: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        raise ValueError(f"--plot needs matplotlib ({e})") from None
    names = [s["name"] for s in rep["stages"]]
    serv = [s["service_ms"] for s in rep["stages"]]
    wait = [max(s["wait_ms"], 0.0) for s in rep["stages"]]
    util = [s["utilisation"] for s in rep["stages"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.barh(names, serv, label="service")
    a1.barh(names, wait, left=serv, label="batching + queueing wait")
    a1.set_xscale("log")
    a1.set_xlabel("mean time per visit (ms)")
    a1.invert_yaxis()
    a1.legend(fontsize=8)
    a2.barh(names, util, color=["C3" if u >= 1 else "C2" for u in util])
    a2.axvline(1.0, color="k", lw=0.8)
    a2.set_xlabel("utilisation (offered / capacity)")
    a2.invert_yaxis()
    fig.suptitle(
        f"{rep['throughput_per_s']:.3g} req/s max (bottleneck {rep['bottleneck']}); "
        f"e2e {rep['e2e_latency_ms'] / 1e3:.2f} s, TTFT {rep['ttft_ms'] / 1e3:.2f} s "
        f"at {rep['arrival_rate_per_s']:.3g} req/s"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def cmd_pipeline(args) -> int:
    import equinox as eqx
    import jax

    jax.config.update("jax_enable_x64", True)
    from .pipeline import evaluate, list_examples, load_pipeline, pipeline_report

    if args.list_examples:
        names = list_examples()
        print(json.dumps(names) if args.json else "\n".join(names))
        return 0
    if args.config is None:
        raise ValueError("give --config P.toml (or an example name; see --list-examples)")
    p = load_pipeline(args.config)
    if args.rate is not None:
        p = eqx.tree_at(lambda q: q.arrival_rate_per_s, p, float(args.rate))
    rep = pipeline_report(p, evaluate(p))
    if args.plot:
        _plot(rep, args.plot)
        rep["plot"] = args.plot
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(_fmt_table(rep))
        if args.plot:
            print(f"wrote {args.plot}")
    return 0


def register(sub) -> None:
    """Add `diffperf pipeline` to the `diffperf` parser."""
    from .cli import _positive_float

    p = sub.add_parser(
        "pipeline",
        help="multi-stage pipeline (RAG, KV retrieval, reasoning, agents) on CPUs/GPUs/ASICs",
    )
    p.add_argument("--config", default=None, help="pipeline TOML file or example name")
    p.add_argument(
        "--rate", type=_positive_float("rate"), default=None, help="override arrival rate (req/s)"
    )
    p.add_argument("--plot", default=None, help="write a per-stage breakdown PNG")
    p.add_argument("--list-examples", action="store_true", help="list the shipped examples")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pipeline)
