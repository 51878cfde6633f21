"""The best batching strategy for the CPU vector search of a hybrid CPU-GPU RAG pipeline.

Run: ``python -m experiments.hermes_rag_batching`` (writes
``experiments/out/hermes_rag_batching.md`` and ``hermes_rag_batching.png``; a few minutes on
2 CPU cores, mostly three XLA compiles).

After the HERMES case study on batching in hybrid pipelines (Bambhaniya et al.,
arXiv:2504.09775, 2025). Pipeline: CPU pre-processing -> bge-large query embedding (1 x H100,
continuous batching) -> exact (flat) search of 10M passages x 768 fp32 (30.7 GB) on a 2-socket
Xeon host -> Llama-3.1-8B prefill of a 1,024-token prompt (2 x H100) -> 256-token decode
(5 x H100) -> CPU post-processing. A flat search streams the whole corpus once per batch, so
the search batch trades waiting for throughput: its service is ~143 ms whatever the batch
size, which caps unbatched search at ~11 requests/s.

Strategies for the search stage (everything else fixed), each swept under ``jit(vmap)`` over
its parameter and the offered load:

- ``static`` B in {1, 4, 16, 64}: wait for B requests, then search;
- ``window`` W in {10, 50, 200} ms (at most 64): search whatever arrived in the window;
- ``continuous`` (dynamic) B_max in {8, 64}: a free socket takes what is waiting.

Reported: maximum throughput and the mean e2e latency at several loads (``inf`` = beyond the
strategy's capacity), and the best strategy at each load.
"""

import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


OUT = Path(__file__).resolve().parent / "out"
LOADS = (1.0, 4.0, 8.0, 16.0, 32.0, 64.0, 96.0)
STRATEGIES = {
    "static": [("B=1", 1.0, 0.0), ("B=4", 4.0, 0.0), ("B=16", 16.0, 0.0), ("B=64", 64.0, 0.0)],
    "window": [("W=10ms", 64.0, 0.01), ("W=50ms", 64.0, 0.05), ("W=200ms", 64.0, 0.2)],
    "continuous": [("Bmax=8", 8.0, 0.0), ("Bmax=64", 64.0, 0.0)],
}


def build(kind: str):
    from diffperf.hardware import load_hardware
    from diffperf.model import load_model
    from diffperf.pipeline import (
        Batching,
        CPUWork,
        Decode,
        Encode,
        Engine,
        Pipeline,
        PipelineSLO,
        PlacedStage,
        Prefill,
        Route,
        VectorIndex,
        VectorSearch,
        default_kv_tiers,
    )
    from diffperf.pipeline._config import SMALL_MODELS
    from diffperf.stages import make_plan

    cpu, gpu = load_hardware("xeon-8480"), load_hardware("h100-sxm")
    llm, emb = load_model("llama-3.1-8b"), SMALL_MODELS["bge-large-en-v1.5"]()
    pl, pe = make_plan(llm), make_plan(emb)
    engines = (
        Engine("cpu", cpu, 2.0, default_kv_tiers(cpu), True),
        Engine("gpu", gpu, 8.0, default_kv_tiers(gpu), False),
    )
    flat = VectorIndex("flat", 1e7, 768.0)
    stages = (
        PlacedStage(
            "pre",
            CPUWork(per_request_s=2e-3, parallel_lanes=8.0),
            "cpu",
            Batching("continuous", 16.0),
            0.05,
        ),
        PlacedStage("embed", Encode(emb, pe, 64.0), "gpu", Batching("continuous", 64.0), 0.125),
        PlacedStage("search", VectorSearch(flat), "cpu", Batching(kind, 64.0, 0.01), 0.9),
        PlacedStage("prefill", Prefill(llm, pl, 1024.0), "gpu", Batching("continuous", 8.0), 0.25),
        PlacedStage(
            "decode",
            Decode(llm, pl, 1024.0, 256.0),
            "gpu",
            Batching("continuous", 128.0),
            0.625,
            first_token=True,
        ),
        PlacedStage(
            "post",
            CPUWork(per_request_s=1e-3, parallel_lanes=8.0),
            "cpu",
            Batching("continuous", 16.0),
            0.05,
        ),
    )
    routes = tuple(Route(a.name, b.name, 1.0) for a, b in zip(stages[:-1], stages[1:]))
    return Pipeline(stages, routes, engines, 1.0, PipelineSLO(e2e_s=10.0))


def run():
    jax.config.update("jax_enable_x64", True)
    from diffperf.pipeline import evaluate

    OUT.mkdir(exist_ok=True)
    t0 = time.time()
    rows = []
    for kind, cfgs in STRATEGIES.items():
        p = build(kind)
        i = p.index("search")

        def f(b, w, rate, p=p, i=i):
            q = eqx.tree_at(
                lambda q: (
                    q.stages[i].batching.batch_size,
                    q.stages[i].batching.window_s,
                    q.arrival_rate_per_s,
                ),
                p,
                (b, w, rate),
            )
            r = evaluate(q)
            return r.throughput_per_s, r.e2e_latency_s, r.ttft_s, r.latency_s[i], r.feasible

        fj = jax.jit(jax.vmap(f))
        n_l = len(LOADS)
        bs = jnp.asarray([c[1] for c in cfgs for _ in LOADS])
        ws = jnp.asarray([c[2] for c in cfgs for _ in LOADS])
        lam = jnp.asarray([x for _ in cfgs for x in LOADS])
        x, e2e, ttft, lat_s, ok = map(np.asarray, fj(bs, ws, lam))
        for k, (label, _, _) in enumerate(cfgs):
            sl = slice(k * n_l, (k + 1) * n_l)
            rows.append(
                {
                    "strategy": kind,
                    "setting": label,
                    # window capacity grows with the load (fuller batches): the largest value
                    # over the loads where the pipeline is feasible
                    "max_req_per_s": float(
                        max([v for v, o in zip(x[sl], ok[sl]) if o], default=x[sl][0])
                    ),
                    "e2e_s": [float(v) if o else None for v, o in zip(e2e[sl], ok[sl])],
                    "ttft_s": [float(v) if o else None for v, o in zip(ttft[sl], ok[sl])],
                    "search_latency_s": [float(v) for v in lat_s[sl]],
                }
            )
    elapsed = time.time() - t0
    _write(rows, elapsed)
    return rows


def _write(rows, elapsed):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = " | ".join(f"e2e @{x:g}/s" for x in LOADS)
    lines = [
        "# Batching the CPU vector search of a hybrid CPU-GPU RAG pipeline (HERMES case 2)",
        "",
        f"Generated by `python -m experiments.hermes_rag_batching` ({elapsed:.0f} s on this "
        "machine). Flat search of 10M x 768 fp32 on 2 Xeon 8480 sockets (90% of the cores), "
        "Llama-3.1-8B on 8 x H100. Mean e2e latency in seconds; `inf` = offered load above "
        "the pipeline's capacity with that strategy.",
        "",
        f"| strategy | setting | max req/s | {head} |",
        "|---|---|---:|" + "---:|" * len(LOADS),
    ]
    for r in rows:
        cells = " | ".join("inf" if v is None else f"{v:.2f}" for v in r["e2e_s"])
        lines.append(f"| {r['strategy']} | {r['setting']} | {r['max_req_per_s']:.1f} | {cells} |")
    lines += ["", "Best strategy at each load (lowest mean e2e latency among feasible ones):", ""]
    for j, x in enumerate(LOADS):
        cand = [(r["e2e_s"][j], r) for r in rows if r["e2e_s"][j] is not None]
        if not cand:
            lines.append(f"- {x:g} req/s: none feasible")
            continue
        v, best = min(cand, key=lambda c: c[0])
        lines.append(f"- {x:g} req/s: {best['strategy']} {best['setting']} ({v:.2f} s)")
    lines += [
        "",
        "Reading: unbatched search caps the pipeline at one corpus scan per request "
        "(~12.6 req/s on 1.8 sockets' worth of cores); static batches raise capacity to the "
        "GPU limit but make early requests wait for the batch to fill, which dominates at "
        "light load; a time window shorter than the scan time per instance (143 ms / 1.8 = "
        "80 ms) piles batches up as soon as most windows hold a request, while a long window "
        "adds half its length to every request; dynamic (continuous) batching adapts the "
        "batch to the load and is the best at light and at the heaviest load and within 10% of "
        "the best in between (on this model). "
        "`max req/s` of window rows is the largest throughput over the feasible loads (the "
        "batch, hence the capacity, grows with the load).",
        "",
    ]
    (OUT / "hermes_rag_batching.md").write_text("\n".join(lines))
    (OUT / "hermes_rag_batching.json").write_text(json.dumps(rows, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, r in enumerate(rows):
        y = [np.nan if v is None else v for v in r["e2e_s"]]
        ls = {"static": "-", "window": "--", "continuous": ":"}[r["strategy"]]
        ax.plot(LOADS, y, ls, marker="o", color=f"C{k}", label=f"{r['strategy']} {r['setting']}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("mean e2e latency (s)")
    ax.set_title("search batching strategy (missing points: over capacity)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "hermes_rag_batching.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run()
