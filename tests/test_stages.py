"""Whole-model iteration: goldens, physics, gradients, transforms, bad plans."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.ops import gemm_cost
from diffperf.stages import (
    PlanError,
    decode_batch,
    estimate,
    iteration,
    make_plan,
    memory_usage,
    mixed_batch,
    prefill_batch,
)

from .helpers import all_finite, finite_difference_grad


@pytest.fixture(scope="module")
def h100():
    return load_hardware("h100-sxm")


@pytest.fixture(scope="module")
def llama70():
    return load_model("llama-3.1-70b")


@pytest.fixture(scope="module")
def dsv3():
    return load_model("deepseek-v3")


def test_weight_and_kv_bytes_golden(h100, llama70):
    # Llama-3.1-70B (80 layers, d=8192, 64 heads, 8 KV heads, head_dim 128, FFN 28672,
    # vocab 128256, untied), bf16, tp=8, pp=1 — per device:
    #   attention: q+o = 2*8192*(64/8*128) = 16,777,216; k+v = 2*8192*(8/8)*128 = 2,097,152
    #              -> 18,874,368 per layer, x80 = 1,509,949,440
    #   FFN: 3*8192*28672/8 = 88,080,384 per layer, x80 = 7,046,430,720
    #   embeddings (in + out, untied): 2*128256*8192/8 = 262,668,288
    #   total 8,819,048,448 params x 2 B = 17,638,096,896 B
    # KV: decode batch 4 at context 1000: per token per layer per device 2*1*128*2 B = 512 B,
    #   x 80 layers x 4000 tokens = 163,840,000 B
    plan = make_plan(llama70, tp=8)
    mem = memory_usage(h100, llama70, plan, decode_batch(4.0, 1000.0))
    np.testing.assert_allclose(mem.weight_bytes, 17_638_096_896.0, rtol=1e-9)
    np.testing.assert_allclose(mem.kv_cache_bytes, 163_840_000.0, rtol=1e-9)
    # usable capacity: 80 GB x 0.9
    np.testing.assert_allclose(mem.capacity_bytes, 80e9 * 0.9, rtol=1e-9)


def test_kv_replicated_when_tp_exceeds_kv_heads(h100):
    # Llama-3.1-8B has 8 KV heads; at tp=16 (hypothetical 32 heads/16) each device still
    # caches one KV head: per-device KV bytes equal those at tp=8.
    m = load_model("llama-3.1-8b")
    b = decode_batch(2.0, 100.0)
    kv8 = memory_usage(h100, m, make_plan(m, tp=8), b).kv_cache_bytes
    kv4 = memory_usage(h100, m, make_plan(m, tp=4), b).kv_cache_bytes
    np.testing.assert_allclose(kv4, 2 * kv8, rtol=1e-12)
    # 2 seqs x 100 tokens x 32 layers x (2 x 1 head x 128 x 2 B) = 3,276,800 B
    np.testing.assert_allclose(kv8, 3_276_800.0, rtol=1e-12)


def test_mla_kv_golden(h100, dsv3):
    # DeepSeek-V3 MLA caches (512 + 64) elements per token per layer, replicated across TP;
    # fp8 KV: 576 B x 61 layers x (8 seqs x 2000 tokens) / dp(=1) = 562,176,000 B per device
    plan = make_plan(dsv3, tp=8, kv_dtype="fp8")
    mem = memory_usage(h100, dsv3, plan, decode_batch(8.0, 2000.0))
    np.testing.assert_allclose(mem.kv_cache_bytes, 576 * 61 * 16000, rtol=1e-12)


def test_dense_decode_is_memory_bound(h100, llama70):
    # Batch-1 decode of a dense model reads every weight once: latency must be at least the
    # weight bytes over peak HBM bandwidth, and within a few x of it (efficiency > ~30%).
    plan = make_plan(llama70, tp=8)
    step = iteration(h100, llama70, plan, decode_batch(1.0, 1024.0))
    w = memory_usage(h100, llama70, plan, decode_batch(1.0, 1024.0)).weight_bytes
    floor = float(w / h100.accel.hbm.bw_bytes_per_s)
    assert floor < float(step.latency_s) < 4 * floor
    assert float(step.breakdown.memory_s) > float(step.breakdown.compute_s)


def test_prefill_is_compute_bound(h100, llama70):
    plan = make_plan(llama70, tp=8)
    step = iteration(h100, llama70, plan, prefill_batch(4.0, 4096.0))
    # 2 * active params * tokens is the GEMM FLOP floor; time >= flop / (devices * peak)
    flop = 2 * float(llama70.param_count()) * 4 * 4096
    assert float(step.latency_s) > flop / (8 * float(h100.accel.peak_bf16_flop_per_s))
    assert float(step.breakdown.compute_s) > float(step.breakdown.memory_s)


def test_step_composition_tp1(h100):
    # With tp=pp=1 a dense layer's FFN time is exactly the sum of its two GEMMs and the
    # activation kernel; check the breakdown against the ops it is built from.
    m = load_model("llama-3.1-8b")
    plan = make_plan(m, tp=1)
    step = iteration(h100, m, plan, decode_batch(16.0, 512.0))
    up = gemm_cost(h100, 16.0, 2 * 14336.0, 4096.0, "bf16")
    down = gemm_cost(h100, 16.0, 4096.0, 14336.0, "bf16")
    from diffperf.ops import elementwise_cost

    act = elementwise_cost(h100, 16.0 * 14336.0, 3 * 2.0)
    np.testing.assert_allclose(
        step.breakdown.dense_ffn_s, 32 * (up.time_s + down.time_s + act.time_s), rtol=1e-12
    )
    assert float(step.breakdown.tp_comm_s) == pytest.approx(0.0, abs=1e-15)
    assert float(step.breakdown.moe_s) == 0.0


def test_estimate_identities(h100, llama70):
    plan = make_plan(llama70, tp=4)
    r = estimate(h100, llama70, plan, 8.0, 1000.0, 200.0)
    # 8 x 1000 = 8000 prompt tokens fit one 8192-token iteration: TTFT = that iteration
    np.testing.assert_allclose(r.ttft_s, r.prefill.latency_s, rtol=1e-12)
    np.testing.assert_allclose(r.e2e_latency_s, r.ttft_s + 199 * r.tpot_s, rtol=1e-12)
    np.testing.assert_allclose(r.throughput_tok_s, 8.0 / r.tpot_s, rtol=1e-12)
    np.testing.assert_allclose(r.throughput_tok_s_per_device, r.throughput_tok_s / 4, rtol=1e-12)
    # the mean TPOT lies between the first and last decode steps
    first = iteration(h100, llama70, plan, decode_batch(8.0, 1000.0)).latency_s
    last = iteration(h100, llama70, plan, decode_batch(8.0, 1200.0)).latency_s
    assert float(first) <= float(r.tpot_s) <= float(last)


def test_estimate_prefill_iterations(h100, llama70):
    # 32 prompts x 2048 tokens = 65,536 tokens over a 8192-token budget -> n = 8 iterations of
    # 4 prompts; mean TTFT = (8 + 1)/2 x t_iter, whole-batch prefill = 8 x t_iter.
    plan = make_plan(llama70, tp=8)
    r = estimate(h100, llama70, plan, 32.0, 2048.0, 10.0, 8192.0)
    t_iter = iteration(h100, llama70, plan, prefill_batch(4.0, 2048.0)).latency_s
    np.testing.assert_allclose(r.prefill.latency_s, t_iter, rtol=1e-12)
    np.testing.assert_allclose(r.ttft_s, 4.5 * t_iter, rtol=1e-12)
    np.testing.assert_allclose(r.prefill_latency_s, 8 * t_iter, rtol=1e-12)


def test_more_bandwidth_never_slower(h100, dsv3):
    plan = make_plan(dsv3, tp=1, dp=16, ep=16, dtype="fp8_block", kv_dtype="fp8")

    def lat(scale):
        hw = eqx.tree_at(
            lambda h: (h.accel.hbm.bw_bytes_per_s, h.fabric.scaleup_bw_bytes_per_s),
            h100,
            (h100.accel.hbm.bw_bytes_per_s * scale, h100.fabric.scaleup_bw_bytes_per_s * scale),
        )
        return iteration(hw, dsv3, plan, decode_batch(16.0 * 64, 4096.0)).latency_s

    vals = [float(lat(s)) for s in (0.5, 1.0, 2.0, 4.0)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_pipeline_halves_weights(h100, llama70):
    b = decode_batch(8.0, 100.0)
    w1 = memory_usage(h100, llama70, make_plan(llama70, tp=4, pp=1), b).weight_bytes
    w2 = memory_usage(h100, llama70, make_plan(llama70, tp=4, pp=2), b).weight_bytes
    # two embedding matrices on one stage vs one per stage: (w1 - 2E)/2 + E = w2
    emb = 128256 * 8192 / 4 * 2.0
    np.testing.assert_allclose((w1 - 2 * emb) / 2 + emb, w2, rtol=1e-12)


@pytest.mark.parametrize("name", ["llama-3.1-8b", "deepseek-v3", "gpt-oss-120b", "deepseek-v3.2"])
def test_grad_matches_fd_and_finite(h100, name):
    model = load_model(name)
    kw = {"tp": 1} if not model.has_moe else {"tp": 1, "dp": 8, "ep": 8}
    plan = make_plan(model, **kw)
    bw0 = float(h100.accel.hbm.bw_bytes_per_s)

    def lat_of_bw(x):
        hw = eqx.tree_at(lambda h: h.accel.hbm.bw_bytes_per_s, h100, jnp.asarray(x * bw0))
        return iteration(hw, model, plan, mixed_batch(32.0, 2048.0, 512.0, 256.0), 0.05).latency_s

    g = float(jax.grad(lat_of_bw)(1.0))
    fd = finite_difference_grad(lambda x: float(lat_of_bw(x)), 1.0)
    assert g < 0
    np.testing.assert_allclose(g, fd, rtol=2e-3)
    # all hardware leaves at once
    grads = jax.grad(lambda hw: iteration(hw, model, plan, decode_batch(1.0, 1.0)).latency_s)(h100)
    assert all_finite(grads)


def test_edge_gradients_finite(h100, llama70):
    # batch 1, tp 1, context 1, memory exactly full: every gradient finite
    m = load_model("llama-3.1-8b")
    plan = make_plan(m, tp=1)
    b = decode_batch(1.0, 1.0)
    mem = memory_usage(h100, m, plan, b)
    full = eqx.tree_at(
        lambda h: h.accel.hbm.capacity_bytes,
        h100,
        mem.total_bytes / h100.accel.usable_memory_fraction,
    )
    np.testing.assert_allclose(memory_usage(full, m, plan, b).margin_bytes, 0.0, atol=1e-3)
    g = jax.grad(lambda hw: memory_usage(hw, m, plan, b).margin_bytes)(full)
    assert all_finite(g)
    g = jax.grad(lambda hw: iteration(hw, m, plan, b).latency_s)(full)
    assert all_finite(g)
    g = jax.grad(lambda p: iteration(h100, m, p, b).latency_s)(plan)
    assert all_finite(g)


def test_jit_eager_vmap_agree_and_no_retrace(h100, dsv3):
    plan = make_plan(dsv3, tp=1, dp=8, ep=8, dtype="fp8_block")

    def f(ctx):
        return iteration(h100, dsv3, plan, decode_batch(256.0, ctx)).latency_s

    ctxs = jnp.array([512.0, 2048.0, 8192.0])
    eager = np.array([float(f(c)) for c in ctxs])
    jitted = np.array([float(jax.jit(f)(c)) for c in ctxs])
    vm = np.asarray(jax.vmap(f)(ctxs))
    np.testing.assert_allclose(eager, jitted, rtol=1e-12)
    np.testing.assert_allclose(eager, vm, rtol=1e-12)
    assert eager[0] < eager[1] < eager[2]  # longer context never faster

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def g(hw, ctx):
        return iteration(hw, dsv3, plan, decode_batch(256.0, ctx)).latency_s

    for bw in (2e12, 3e12, 5e12):
        hw = eqx.tree_at(lambda h: h.accel.hbm.bw_bytes_per_s, h100, jnp.asarray(bw))
        g(hw, jnp.asarray(1000.0))


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"tp": 3}, "tp"),
        ({"tp": 128}, "tp"),  # more devices than the 64 heads
        ({"pp": 200}, "pp"),
    ],
)
def test_bad_plans_name_the_field(llama70, kw, field):
    with pytest.raises(PlanError, match=f"plan.{field}"):
        make_plan(llama70, **kw)


def test_bad_moe_plans(dsv3):
    with pytest.raises(PlanError, match="plan.ep"):
        make_plan(dsv3, tp=1, dp=6, ep=6)  # 256 experts not divisible by 6
    with pytest.raises(PlanError, match="moe_tp"):
        make_plan(dsv3, tp=8, ep=2, moe_tp=2)  # 2*2 != 8
    with pytest.raises(PlanError, match="dtype"):
        make_plan(dsv3, tp=8, dtype="fp7")


def test_two_batch_overlap_and_redundant_experts():
    # DeepSeek-V3 decode on 144 H800 (EP144, 256 + 32 redundant experts = 2 per GPU).
    hw = load_hardware("h800")
    m = load_model("deepseek-v3")
    kw = dict(dp=144, ep=144, dtype="fp8_block", kv_dtype="fp8", redundant_experts=32)
    b = decode_batch(144 * 64.0, 4989.0)
    plain = iteration(hw, m, make_plan(m, **kw), b)
    tbo_plan = make_plan(m, two_batch_overlap=True, **kw)
    tbo = iteration(hw, m, tbo_plan, b)
    # overlap: each half's compute hides the other's communication -> never slower than the
    # sum, never faster than the larger of compute and communication alone
    assert float(tbo.latency_s) < float(plain.latency_s)
    bd = tbo.breakdown
    compute = bd.attention_s + bd.dense_ffn_s + bd.moe_s + bd.norm_s
    comm = bd.moe_comm_s + bd.tp_comm_s
    np.testing.assert_allclose(
        tbo.latency_s, jnp.maximum(compute, comm) + bd.embed_lm_head_s, rtol=1e-9, atol=1e-12
    )
    # 288 expert slots over 144 GPUs: 2 routed experts per device (x 58 MoE layers)
    per_expert = 3 * 7168 * 2048 * (1 + 4 / 128)  # fp8_block bytes incl. block scales
    w = memory_usage(hw, m, make_plan(m, **kw), b).weight_bytes
    w0 = memory_usage(
        hw, m, make_plan(m, **{**kw, "redundant_experts": 0, "dp": 128, "ep": 128}), b
    )
    np.testing.assert_allclose(w - w0.weight_bytes, 58 * per_expert * (2 - 2), atol=1.0)
    with pytest.raises(PlanError, match="incl. 32 redundant"):
        make_plan(m, dp=7, ep=7, redundant_experts=32)
