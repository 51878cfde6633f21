"""Platform requirements per use case and model, in the structure of GenZ's study.

Run: ``python -m experiments.platform_requirements`` (writes
``experiments/out/platform_requirements.md`` and ``platform_requirements_*.png``; about 5-10
minutes on 2 CPU cores, nearly all of it compilation). ``--quick`` runs two models.

Structure (Bambhaniya et al., 2024, "Demystifying Platform Requirements for Diverse LLM
Inference Use Cases", arXiv:2406.01698): for each use case (ISL, OSL, TTFT and TPOT budgets)
and each model, the least memory bandwidth (TB/s) that meets the TPOT budget, the least
compute (PFLOP/s) that meets the TTFT budget, and the memory capacity that holds weights and
KV cache; models include ones that do not exist yet (dense and MoE at 10T parameters) and a
million-token context. The platform is one accelerator of Hopper characteristics (the
``h100-sxm`` preset's fitted efficiencies, launch overheads and memory-size saturation) whose
bandwidth, FLOP/s and capacity are scaled; TP1, batch 1, bf16 weights and KV, the whole
prompt prefilled in one iteration (activations of a 1M-token prefill count in capacity), so
interconnect does not enter these tables (the joint table and ``diffperf project`` cover
scale-up/scale-out on real multi-device plans).

Each requirement is found by :func:`diffperf.search._project.required_scale`: a bisection in
log space on the exact model, ``jax.vmap``-ed over the six use cases in one compiled call
per (model, resource). While solving for one resource the others are ×1000 (unlimited), as
a roofline study assumes; the "roofline" columns are the textbook bounds computed here from
first principles (bytes per decode step / TPOT; prefill FLOPs / TTFT), which is what an
idealised analytical model such as GenZ's reduces to with unit efficiencies.

Use cases and budgets: GenZ's use-case table could not be retrieved while this script was
written (only the paper's abstract was available), so the budgets below are ours, chosen
against public serving targets: MLPerf Inference's Llama-2-70B interactive scenario (TTFT
p99 450 ms, TPOT 40 ms) for QA/chat, its server scenario (TTFT 2 s) for RAG, relaxed TTFT for
long-input summarisation, a 20 ms TPOT (50 tokens/s, faster than reading) for code
generation, and a 1M-token document with a 2-minute TTFT. Numbers in the GenZ paper are
therefore NOT reproduced digit for digit; the "ratio" columns show where and why an
efficiency-aware model needs more than an ideal roofline.
"""

import argparse
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffperf._plot_search import requirements_bars
from diffperf.deploy import SLO, Workload
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.model._scale import scale_model
from diffperf.search._project import required_scale
from diffperf.search._sensitivity import RESOURCES, Point, StaticBatch, set_values
from diffperf.stages import make_plan


OUT = Path(__file__).resolve().parent / "out"

# name -> (ISL tokens, OSL tokens, TTFT budget s, TPOT budget s); sources in the docstring
USE_CASES = {
    "qa": (1_000, 200, 0.45, 0.040),
    "chat": (3_000, 400, 1.0, 0.040),
    "rag": (8_000, 300, 2.0, 0.040),
    "summarisation": (16_000, 800, 5.0, 0.050),
    "code-gen": (2_000, 1_000, 0.45, 0.020),
    "1M-context": (1_000_000, 1_000, 120.0, 0.050),
}
UNLIMITED = 1e3


def models(quick: bool) -> dict:
    out = {
        "llama-3.1-8b": load_model("llama-3.1-8b"),
        "llama-3.1-70b": load_model("llama-3.1-70b"),
    }
    if quick:
        return out
    l405 = load_model("llama-3.1-405b")
    dsv3 = load_model("deepseek-v3")
    out.update(
        {
            "llama-3.1-405b": l405,
            "dense-1T (405B scaled)": scale_model(l405, 1e12, name="dense-1T"),
            "dense-10T (405B scaled)": scale_model(l405, 10e12, name="dense-10T"),
            "deepseek-v3": dsv3,
            "moe-10T (V3 scaled)": scale_model(dsv3, 10e12, expert_exponent=1.0, name="moe-10T"),
        }
    )
    return out


def workloads() -> Workload:
    """The use cases as ONE batched Workload pytree (leading axis = use case)."""
    ws = [
        Workload(isl_tokens=float(i), osl_tokens=float(o), slo=SLO(ttft_s=t, tpot_s=p), name="uc")
        for i, o, t, p in USE_CASES.values()
    ]
    return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *ws)


def _solve_all(point: Point, batched_w: Workload, direction: dict, constraints, others: float):
    if others != 1.0:
        point = set_values(point, {"scale." + r: others for r in RESOURCES if r not in direction})

    @eqx.filter_jit
    def run(p, w):
        def one(wi):
            return required_scale(
                eqx.tree_at(lambda q: q.workload, p, wi),
                direction,
                lo=1e-4,
                hi=1e5,
                constraints=constraints,
            )

        return jax.vmap(one)(w)

    return np.asarray(run(point, batched_w))


def roofline(model, isl: float, osl: float) -> tuple[float, float, float]:
    """(decode bytes per step, prefill FLOPs, weight+KV bytes) of one request, bf16.

    Decode reads the active weights once per step (2 bytes/param; MoE at batch 1: the routed
    top-k and shared experts) plus the KV cache at the mean context ISL + OSL/2. Prefill does
    2 FLOPs per active parameter per token plus causal attention, 2·ISL²·heads·head_dim per
    layer (QKᵀ and PV over the lower triangle). Capacity: all weights + KV at ISL + OSL.
    """
    f = lambda x: float(np.asarray(x))
    active = f(model.active_param_count())
    total = f(model.param_count())
    kv_tok = f(model.kv_cache_bytes_per_token(2.0))
    if model.attention == "gqa":
        qk_dim = f(model.head_dim)
    else:
        qk_dim = f(model.qk_nope_head_dim) + f(model.qk_rope_head_dim)
    attn = 2.0 * isl**2 * f(model.num_heads) * qk_dim * f(model.num_layers)
    decode_bytes = 2.0 * active + kv_tok * (isl + 0.5 * osl)
    prefill_flop = 2.0 * active * isl + attn
    return decode_bytes, prefill_flop, 2.0 * total + kv_tok * (isl + osl)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite the Markdown from the saved JSON"
    )
    args = ap.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    if args.report_only:
        write_report(json.loads((OUT / "platform_requirements.json").read_text()), args.quick)
        return
    hw = load_hardware("h100-sxm")
    ref_bw = float(hw.accel.hbm.bw_bytes_per_s)
    ref_flops = float(hw.accel.peak_bf16_flop_per_s)
    ref_cap = float(hw.accel.hbm.capacity_bytes * hw.accel.usable_memory_fraction)
    ws = workloads()
    rows, joint = [], []
    bw_bars, fl_bars = {}, {}
    for label, model in models(args.quick).items():
        # the whole prompt in one prefill iteration (as a roofline study assumes); the default
        # 8192-token chunks would make estimate's mean-over-the-batch TTFT, (n+1)/2 chunks,
        # shorter than a lone request's n chunks
        plan = make_plan(model, dtype="bf16", moe_dtype="bf16")
        dep = StaticBatch(plan, batch=1.0, max_num_tokens=2e6)
        point = Point(hw, dep, jax.tree_util.tree_map(lambda x: x[0], ws), model)
        s_bw = _solve_all(point, ws, {"hbm_bw": 1.0}, ("tpot",), UNLIMITED)
        s_fl = _solve_all(point, ws, {"flops": 1.0}, ("ttft",), UNLIMITED)
        s_cap = _solve_all(point, ws, {"hbm_capacity": 1.0}, ("memory",), 1.0)
        s_all = _solve_all(point, ws, {r: 1.0 for r in RESOURCES}, ("ttft", "tpot", "memory"), 1.0)
        params = float(np.asarray(model.param_count()))
        bw_bars[label], fl_bars[label] = {}, {}
        for j, (uc, (isl, osl, ttft, tpot)) in enumerate(USE_CASES.items()):
            dec_b, pre_f, cap_b = roofline(model, isl, osl)
            bw = float(s_bw[j]) * ref_bw
            fl = float(s_fl[j]) * ref_flops
            row = {
                "model": label,
                "params": params,
                "use_case": uc,
                "isl": isl,
                "osl": osl,
                "ttft_budget_s": ttft,
                "tpot_budget_s": tpot,
                "bw_tb_s": bw / 1e12,
                "bw_roofline_tb_s": dec_b / tpot / 1e12,
                "pflop_s": fl / 1e15,
                "pflop_roofline": pre_f / ttft / 1e15,
                "capacity_gb": float(s_cap[j]) * ref_cap / 1e9,
                "capacity_roofline_gb": cap_b / 1e9,
                "h100_equivalents": float(s_all[j]),
            }
            rows.append(row)
            bw_bars[label][uc] = row["bw_tb_s"]
            fl_bars[label][uc] = row["pflop_s"]
        joint.append((label, s_all))
    requirements_bars(
        bw_bars,
        str(OUT / "platform_requirements_bandwidth.png"),
        "HBM bandwidth for the TPOT budget (TB/s)",
        "least memory bandwidth per use case (batch 1, bf16; inf = unreachable)",
    )
    requirements_bars(
        fl_bars,
        str(OUT / "platform_requirements_compute.png"),
        "compute for the TTFT budget (PFLOP/s, bf16 dense)",
        "least compute per use case (batch 1, bf16; inf = unreachable)",
    )
    write_report(rows, args.quick)
    (OUT / "platform_requirements.json").write_text(json.dumps(rows, indent=1))


def _fmt(x: float, nd: int = 3) -> str:
    return f"{x:.{nd}g}" if np.isfinite(x) else "unreachable"


def _range(rows, key_num, key_den, pick) -> str:
    r = [x[key_num] / x[key_den] for x in rows if pick(x) and np.isfinite(x[key_num])]
    return f"{min(r):.2f}-{max(r):.2f}" if r else "n/a"


def findings(rows: list) -> list[str]:
    """Where and why the efficiency-aware requirements differ from the ideal roofline."""
    e = load_hardware("h100-sxm").accel.eff
    mem_eff = float(e.gemm.mem_eff)
    gemm_eff = float(e.gemm.compute_eff_bf16)
    attn_eff = float(e.attention.prefill_eff_bf16)
    tile = float(e.moe.tile_m_elems)
    ms = models(quick=False)
    dense10 = int(float(ms["dense-10T (405B scaled)"].num_layers))
    moe10 = int(float(ms["moe-10T (V3 scaled)"].num_experts))
    dense = lambda x: not x["model"].startswith(("deepseek", "moe"))
    moe = lambda x: not dense(x)
    short_tpot = lambda x: x["tpot_budget_s"] >= 0.04
    return [
        "## Where and why these differ from an ideal roofline (GenZ-style) estimate",
        "",
        "- **Bandwidth for TPOT**: "
        + _range(rows, "bw_tb_s", "bw_roofline_tb_s", lambda x: short_tpot(x))
        + "x the roofline for the 40-50 ms budgets. Streaming weights reaches "
        f"`gemm.mem_eff` = {mem_eff:.2f} of peak HBM bandwidth on Hopper (fitted to measured "
        f"GEMV/GEMM tables), i.e. {1 / mem_eff:.2f}x, and every kernel adds a launch overhead "
        "(2-11 us) that no "
        "bandwidth removes. With the 20 ms code-generation budget the ratio grows to "
        + _range(rows, "bw_tb_s", "bw_roofline_tb_s", lambda x: x["use_case"] == "code-gen")
        + f"x: launch overheads are a fixed share of a deep model's step (the {dense10}-layer "
        "dense-10T spends several ms per token on launches), so the bandwidth must rise "
        "faster than 1/TPOT; an ideal roofline has no such floor.",
        "- **Compute for TTFT**, dense models: "
        + _range(rows, "pflop_s", "pflop_roofline", lambda x: dense(x) and x["isl"] < 1e5)
        + f"x (GEMM efficiency {gemm_eff:.2f} bf16 plus attention at `prefill_eff_bf16` = "
        f"{attn_eff:.2f} and launches); at 1M tokens attention dominates the FLOPs and the "
        "ratio is "
        + _range(rows, "pflop_s", "pflop_roofline", lambda x: dense(x) and x["isl"] >= 1e5)
        + f"x, close to 1/{attn_eff:.2f} = {1 / attn_eff:.2f}.",
        "- **Compute for TTFT**, MoE models: "
        + _range(rows, "pflop_s", "pflop_roofline", lambda x: moe(x) and x["isl"] < 1e5)
        + f"x. A 1,000-3,000-token prompt spreads over 256 (DeepSeek-V3) or {moe10} (moe-10T) "
        "experts, a few tokens per expert: grouped GEMMs with small m pad their row tiles "
        f"({tile:.0f} rows) and run far below peak, and the layer touches nearly every "
        "expert's weights. "
        "A roofline that counts 2 x active parameters x tokens misses both; the gap "
        "grows with the expert count.",
        "- **Capacity**: weights + KV at ISL + OSL + prefill activations (usable fraction "
        "applied); the 1M-token rows are dominated by the KV cache (Llama-3.1-405B: 0.5 MB "
        "per token in bf16) and by one-shot prefill activations.",
        "- **GenZ's published numbers**: not reproduced here (its tables were not available "
        "to this script's author); the structure (use cases x models incl. future ones, "
        "required TB/s and PFLOP/s) is. Expect our requirements to exceed an idealised "
        "analytical model's by the factors above, for the reasons above; where GenZ applies "
        "its own efficiency factors the difference shrinks accordingly.",
    ]


def write_report(rows: list, quick: bool):
    lines = [
        "# Platform requirements per use case (structure of GenZ, Bambhaniya et al. 2024)",
        "",
        "Command: `python -m experiments.platform_requirements"
        + (" --quick`" if quick else "`")
        + ". One Hopper-like accelerator (h100-sxm efficiencies), TP1, batch 1, bf16 "
        "weights and KV. Requirements come from a log-space bisection on the exact model, "
        "vmapped over the use cases; the other resources are x1000 while one is solved "
        "(roofline assumption). `roofline` = bytes per decode step / TPOT budget and "
        "prefill FLOPs / TTFT budget with unit efficiencies (the idealised analytical bound).",
        "",
        "| use case | ISL / OSL | TTFT / TPOT budget |",
        "|---|---|---|",
        *(
            f"| {k} | {i:,} / {o:,} | {t:g} s / {1e3 * p:g} ms |"
            for k, (i, o, t, p) in USE_CASES.items()
        ),
        "",
        "| model | use case | TB/s (diffperf) | TB/s (roofline) | ratio | PFLOP/s (diffperf) "
        "| PFLOP/s (roofline) | ratio | capacity GB | H100-equivalents (all x s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rb = r["bw_tb_s"] / r["bw_roofline_tb_s"]
        rf = r["pflop_s"] / r["pflop_roofline"]
        lines.append(
            f"| {r['model']} | {r['use_case']} | {_fmt(r['bw_tb_s'])} | "
            f"{_fmt(r['bw_roofline_tb_s'])} | {_fmt(rb)} | {_fmt(r['pflop_s'])} | "
            f"{_fmt(r['pflop_roofline'])} | {_fmt(rf)} | {_fmt(r['capacity_gb'], 4)} | "
            f"{_fmt(r['h100_equivalents'])} |"
        )
    lines += ["", *findings(rows)]
    lines += [
        "",
        "![bandwidth](platform_requirements_bandwidth.png)",
        "",
        "![compute](platform_requirements_compute.png)",
        "",
    ]
    (OUT / "platform_requirements.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
