"""Reproduce published production serving figures from their stated setups.

Run: ``python -m experiments.production_figures`` (writes
``experiments/out/production_figures.md`` and prints the table; ~10 s on 2 CPU cores).

Every kernel efficiency is the shipped calibration (nothing here is tuned to these figures).
Each case names its source, the published figure, the setup taken from the source ("S") or
assumed where the source does not say ("A"), which diffperf scheme computed it, and the
ratio predicted / published. The bar is +-30%.

a. DeepSeek-V3/R1 inference system ("Day 6", DeepSeek, 2025-03-01): H800, decode EP144
   (DP144 attention, 256 + 32 redundant experts, 2 per GPU), prefill EP32 (4 nodes);
   two-batch overlap; FP8 weights; 56.3% of input tokens hit the on-disk KV cache; mean KV
   length 4,989 per output token; 20-22 tokens/s per user; per H800 node 73.7k input
   tokens/s during prefill (incl. cache hits) and 14.8k output tokens/s during decode.
   608B input and 168B output tokens a day -> ISL/OSL = 3.62, and ISL + OSL/2 = 4,989 ->
   ISL 4,384, OSL 1,211 (A: this split of the mean).
b. SGLang large-scale EP (LMSYS blog, 2025-05-05): DeepSeek-V3 on 12 nodes of 8 H100 with
   P/D disaggregation, DeepEP, EPLB (288 = 256 + 32 experts), two-batch overlap; 52.3k input
   and 22.3k output tokens/s per node for 2,000-token inputs. A: prefill 3 nodes (EP24),
   decode 9 nodes (EP72), decode batch 256 per GPU (the blog drives decode to its maximum
   batch), prefill 16,384 tokens per GPU per iteration, 100 output tokens.
c. Step-3 (StepFun, arXiv:2507.19427): AFD decode on H800, 4K context, FP8, no MTP, 50 ms
   TPOT -> 4,039 tokens/s per GPU. A: 2A2F = 16 attention + 16 FFN GPUs (the paper's
   32-GPU minimum deployment), FFN as EP16, 2 ping-pong micro-batches, FP8 KV cache; MFA is
   modelled as GQA with one 256-dim KV head (see the preset's note).
"""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from diffperf.deploy import Workload
from diffperf.deploy._afd import AFD
from diffperf.deploy._disaggregated import host_overhead_s, prefill_pool
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.stages import decode_batch, iteration, make_plan, memory_usage


OUT = Path(__file__).resolve().parent / "out" / "production_figures.md"
BAR = 0.30


def _largest_batch(step_s, target_s, lo=1.0, hi=1024.0, iters=30):
    """Largest per-GPU batch whose step time is <= target (bisection; step_s increasing)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if float(step_s(jnp.asarray(mid))) <= target_s:
            lo = mid
        else:
            hi = mid
    return lo


def _decode_tpot_fn(hw, model, plan, context):
    """Disaggregated's decode-pool step: max(GPU iteration, host overhead) at ``B`` per GPU."""
    n = float(plan.devices)

    @eqx.filter_jit
    def f(b):
        gpu = iteration(hw, model, plan, decode_batch(n * b, context)).latency_s
        return jnp.maximum(gpu, host_overhead_s(b))

    return f


def deepseek_day6():
    hw, ds = load_hardware("h800"), load_model("deepseek-v3")
    isl, osl, hit = 4384.0, 1211.0, 0.563
    rows = []
    # decode: EP144 at 21 tok/s/user (the middle of 20-22)
    plan_d = make_plan(ds, tp=1, dp=144, ep=144, two_batch_overlap=True, redundant_experts=32)
    tpot = 1.0 / 21.0
    f = _decode_tpot_fn(hw, ds, plan_d, isl + 0.5 * osl)
    b = _largest_batch(f, tpot)
    t = float(f(jnp.asarray(b)))
    mem = memory_usage(hw, ds, plan_d, decode_batch(144.0 * b, isl + osl))
    rows.append(
        dict(
            case="a. DeepSeek-V3 decode, H800 EP144",
            source="DeepSeek Day 6 (2025-03-01)",
            metric="output tok/s per node @ 21 tok/s/user",
            published=14.8e3,
            predicted=8.0 * b / t,
            scheme="Disaggregated decode pool (stages.iteration, TBO)",
            notes=f"B = {b:.0f}/GPU at TPOT {1e3 * t:.1f} ms; KV fits: {bool(mem.fits)}",
        )
    )
    # prefill: EP32, 4 nodes, capacity of the pool, input tokens incl. cache hits
    plan_p = make_plan(ds, tp=1, dp=32, ep=32, two_batch_overlap=True, redundant_experts=32)
    w = Workload(isl_tokens=isl, osl_tokens=osl, prefix_hit_rate=hit)
    pool, _ = prefill_pool(hw, ds, plan_p, 1.0, 1e6, 16384.0, w, 144.0, 1.0)
    rows.append(
        dict(
            case="a. DeepSeek-V3 prefill, H800 EP32",
            source="DeepSeek Day 6 (2025-03-01)",
            metric="input tok/s per node (incl. 56.3% cache hits)",
            published=73.7e3,
            predicted=float(pool.capacity_per_s) * isl / 4.0,
            scheme="Disaggregated prefill pool at capacity (TBO)",
            notes=(
                f"{float(pool.b_cap) / 32:.1f} prompts/GPU per "
                f"{float(pool.t_cap_s):.2f} s iteration"
            ),
        )
    )
    return rows


def sglang_96_h100():
    hw, ds = load_hardware("h100-sxm"), load_model("deepseek-v3")
    isl, osl = 2000.0, 100.0
    plan_p = make_plan(ds, tp=1, dp=24, ep=24, two_batch_overlap=True, redundant_experts=32)
    w = Workload(isl_tokens=isl, osl_tokens=osl)
    pool, _ = prefill_pool(hw, ds, plan_p, 1.0, 1e6, 16384.0, w, 72.0, 1.0)
    rows = [
        dict(
            case="b. SGLang DeepSeek-V3 prefill, H100 EP24",
            source="LMSYS blog 2025-05-05 (96 H100)",
            metric="input tok/s per node (2,000-token inputs)",
            published=52.3e3,
            predicted=float(pool.capacity_per_s) * isl / 3.0,
            scheme="Disaggregated prefill pool at capacity (TBO)",
            notes=f"iteration {float(pool.t_cap_s):.2f} s for 16,384 tokens/GPU",
        )
    ]
    plan_d = make_plan(ds, tp=1, dp=72, ep=72, two_batch_overlap=True, redundant_experts=32)
    f = _decode_tpot_fn(hw, ds, plan_d, isl + 0.5 * osl)
    b = 256.0
    t = float(f(jnp.asarray(b)))
    mem = memory_usage(hw, ds, plan_d, decode_batch(72.0 * b, isl + osl))
    t128 = float(f(jnp.asarray(128.0)))
    rows.append(
        dict(
            case="b. SGLang DeepSeek-V3 decode, H100 EP72",
            source="LMSYS blog 2025-05-05 (96 H100)",
            metric="output tok/s per node",
            published=22.3e3,
            predicted=8.0 * b / t,
            scheme="Disaggregated decode pool (stages.iteration, TBO)",
            notes=(
                f"B = 256/GPU (A), TPOT {1e3 * t:.0f} ms, KV fits: {bool(mem.fits)}; "
                f"at B = 128: {8.0 * 128.0 / t128 / 1e3:.1f}k"
            ),
        )
    )
    return rows


def step3_afd(fp8_attention: bool = True):
    """Step-3's reported setting runs the MFA attention computation in FP8 (FP8 KV and FP8
    attention math), so the headline case uses ``attention_dtype="fp8"``; the variant with
    ``fp8_attention=False`` (bf16 attention math) shows how much of the figure that choice
    carries. No efficiency parameter changes."""
    hw, st = load_hardware("h800"), load_model("step3")
    prefill = make_plan(st, tp=8, dtype="fp8")
    afd = AFD(
        prefill_plan=prefill,
        prefill_instances=1.0,
        prefill_max_batch=8.0,
        attention_devices=16.0,
        ffn_devices=16.0,
        microbatches=2.0,
        decode_batch=1024.0,
        weight_dtype="fp8",
        moe_dtype="fp8",
        kv_dtype="fp8",
        comm_dtype="fp8",
        attention_dtype="fp8" if fp8_attention else "bf16",
    )
    f = eqx.filter_jit(lambda b: afd.decode_step(hw, st, b, 4096.0).tpot_s)
    b = _largest_batch(f, 0.050)
    s = afd.decode_step(hw, st, b, 4096.0)
    t = float(s.tpot_s)
    mem_a, mem_f = afd.memory(hw, st, b, 4096.0)
    parts = ", ".join(
        f"{k} {1e3 * float(getattr(s, k + '_s')):.0f}"
        for k in ("attention", "dispatch", "ffn", "combine", "dense")
    )
    return [
        dict(
            case="c. Step-3 AFD decode, H800 2A2F"
            + ("" if fp8_attention else " (variant: bf16 attention math)"),
            source="StepFun arXiv:2507.19427",
            metric="output tok/s per GPU @ TPOT <= 50 ms, 4K ctx",
            published=4039.0,
            predicted=16.0 * b / t / 32.0,
            scheme="AFD.decode_step",
            notes=(
                f"B = {b:.0f}/attention GPU, TPOT {1e3 * t:.1f} ms; busy ms: {parts}; "
                f"fits A/F: {bool(mem_a.fits)}/{bool(mem_f.fits)}"
            ),
        )
    ]


def all_rows():
    rows = deepseek_day6() + sglang_96_h100() + step3_afd() + step3_afd(fp8_attention=False)
    for r in rows:
        r["ratio"] = r["predicted"] / r["published"]
        r["within_bar"] = abs(r["ratio"] - 1.0) <= BAR
    return rows


def _fmt(x):
    return f"{x / 1e3:.1f}k" if x >= 1e4 else f"{x:,.0f}"


def main():
    jax.config.update("jax_enable_x64", True)
    rows = all_rows()
    head = "| case | metric | published | predicted | ratio | within +-30% | scheme | notes |"
    lines = [
        "# Published production figures vs diffperf",
        "",
        "Generated by `python -m experiments.production_figures`; sources and assumptions in",
        "the script's docstring. No efficiency parameter was tuned to these figures.",
        "",
        head,
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['metric']} | {_fmt(r['published'])} | {_fmt(r['predicted'])} "
            f"| {r['ratio']:.2f} | {'yes' if r['within_bar'] else 'NO'} | {r['scheme']} "
            f"| {r['notes']} ({r['source']}) |"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    for r in rows:
        print(
            f"{r['case']:<42} published {_fmt(r['published']):>7}  predicted "
            f"{_fmt(r['predicted']):>7}  ratio {r['ratio']:.2f}  {r['notes']}"
        )


if __name__ == "__main__":
    main()
