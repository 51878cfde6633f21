"""P/D disaggregation: goldens, Little's law, rate matching, gradients, transforms."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.deploy import Disaggregated, Workload, kv_transfer_bytes, layerwise_overlap_s
from diffperf.deploy._disaggregated import prefill_pool
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.stages import decode_batch, iteration, make_plan

from .helpers import all_finite


@pytest.fixture(scope="module")
def gb200():
    return load_hardware("gb200")


@pytest.fixture(scope="module")
def llama70():
    return load_model("llama-3.1-70b")


_PLANS = {}


def _scheme(model, p_inst=2.0, d_inst=4.0, p_batch=4.0, d_batch=128.0):
    if model.name not in _PLANS:  # may first be reached inside a jit trace
        with jax.ensure_compile_time_eval():
            _PLANS[model.name] = make_plan(model, tp=4)
    plan = _PLANS[model.name]
    return Disaggregated(plan, plan, p_inst, d_inst, p_batch, d_batch)


_metrics = eqx.filter_jit(lambda s, hw, m, w, tau: s.metrics(hw, m, w, tau))


def _closed(n, isl=2000.0, osl=500.0):
    return Workload(isl_tokens=isl, osl_tokens=osl, concurrency=n, load_mode="closed")


def _open(rate, isl=2000.0, osl=500.0):
    return Workload(isl_tokens=isl, osl_tokens=osl, arrival_rate_per_s=rate, load_mode="open")


def test_kv_transfer_bytes_golden(llama70):
    # Llama-3.1-70B: 8 KV heads x head_dim 128, K and V, bf16 (2 B), 80 layers:
    #   2 * 8 * 128 * 2 B = 4,096 B per token per layer; x 80 = 327,680 B per token;
    #   ISL 2,000 tokens -> 655,360,000 B.
    np.testing.assert_allclose(kv_transfer_bytes(llama70, 1.0, "bf16"), 2 * 8 * 128 * 80 * 2.0)
    np.testing.assert_allclose(kv_transfer_bytes(llama70, 2000.0, "bf16"), 655_360_000.0)
    # fp8 KV halves it
    np.testing.assert_allclose(kv_transfer_bytes(llama70, 2000.0, "fp8"), 327_680_000.0)


def test_layerwise_overlap_golden():
    # two-stage flow line of L items: max(a, b) + min(a, b)/L
    # a = 80 ms compute, b = 40 ms transfer, L = 80 layers -> 80 + 40/80 = 80.5 ms
    np.testing.assert_allclose(layerwise_overlap_s(0.08, 0.04, 80.0), 0.0805)
    # transfer-bound: a = 10 ms, b = 40 ms, L = 10 -> 40 + 1 = 41 ms
    np.testing.assert_allclose(layerwise_overlap_s(0.01, 0.04, 10.0), 0.041)
    # one layer: no overlap -> a + b
    np.testing.assert_allclose(layerwise_overlap_s(0.01, 0.04, 1.0), 0.05)


def test_kv_transfer_uses_scaleup_inside_domain(gb200, llama70):
    # 2 x 4 + 4 x 4 = 24 GPUs fit one 72-GPU NVL72 domain: the KV goes over NVLink. The same
    # deployment with a 16-GPU domain crosses NICs (50 GB/s vs 900 GB/s) -> longer transfer.
    w = _open(1.0)
    plan = _scheme(llama70).prefill_plan
    small = eqx.tree_at(lambda h: h.fabric.scaleup_domain_size, gb200, jnp.asarray(16.0))
    pool_in, _ = prefill_pool(gb200, llama70, plan, 2.0, 4.0, 8192.0, w, 4.0, 0.0)
    pool_out, _ = prefill_pool(small, llama70, plan, 2.0, 4.0, 8192.0, w, 4.0, 1.0)
    # 655 MB over 4 links: NICs >= 655e6/4/50e9 = 3.3 ms; NVLink 0.18 ms + 80 message latencies
    assert float(pool_out.kv_s) > 655.36e6 / 4 / 50e9 > 2.0 * float(pool_in.kv_s)


def test_closed_loop_littles_law(gb200, llama70):
    # X * R = N with X = throughput / OSL and R = TTFT + (OSL-1) TPOT, for decode-bound
    # (few clients per slot), prefill-bound and over-subscribed loads.
    for n, p_inst in ((16.0, 2.0), (256.0, 1.0), (2000.0, 2.0)):
        m = _metrics(_scheme(llama70, p_inst=p_inst), gb200, llama70, _closed(n), 0.0)
        x = m.throughput_tok_s / 500.0
        np.testing.assert_allclose(x * m.request_latency_s, n, rtol=1e-6)
        # Little on the decode pool: B = X (OSL-1) TPOT / D (at most the max batch)
        np.testing.assert_allclose(
            m.decode_batch, jnp.minimum(x * 499.0 * m.tpot_s / 4.0, 128.0), rtol=1e-6
        )
        assert float(m.utilisation) < 1.0  # a closed loop is never rate-infeasible


def test_decode_batch_root_is_consistent(gb200, llama70):
    # unsaturated: the decode step at the solved batch gives the reported TPOT
    w = _closed(64.0)
    s = _scheme(llama70)
    m = _metrics(s, gb200, llama70, w, 0.0)
    assert 0.0 < float(m.decode_batch) < 128.0
    gpu = iteration(gb200, llama70, s.decode_plan, decode_batch(m.decode_batch, 2250.0)).latency_s
    np.testing.assert_allclose(m.tpot_s, jnp.maximum(gpu, 0.5e-3 + 37e-6 * m.decode_batch))


def test_open_loop_throughput_is_min_of_capacities(gb200, llama70):
    # tau = 0, offered load far above both capacities: carried = min(prefill, decode capacity)
    s = _scheme(llama70, p_inst=1.0, d_inst=1.0, d_batch=64.0)
    w = _open(1e4)
    m = _metrics(s, gb200, llama70, w, 0.0)
    pool, _ = prefill_pool(gb200, llama70, s.prefill_plan, 1.0, 4.0, 8192.0, w, 4.0, 0.0)
    t_full = m.tpot_s  # saturated: B = 64
    cap_d = 64.0 / (499.0 * t_full)
    cap_p = pool.capacity_per_s
    np.testing.assert_allclose(m.decode_batch, 64.0)
    np.testing.assert_allclose(m.throughput_tok_s, 500.0 * jnp.minimum(cap_d, cap_p), rtol=1e-9)
    assert float(m.utilisation) > 1.0 and float(m.rate_ok) == 0.0
    # light load: everything offered is carried
    m2 = _metrics(s, gb200, llama70, _open(0.5), 0.0)
    np.testing.assert_allclose(m2.throughput_tok_s, 250.0, rtol=1e-9)
    # (the decode batch root is polished by one Newton step: ~1e-6 relative)
    np.testing.assert_allclose(m2.decode_batch, 0.5 * 499.0 * m2.tpot_s, rtol=1e-4)


def test_monotone_nic_bw_and_decode_instances(gb200, llama70):
    small = eqx.tree_at(
        lambda h: h.fabric.scaleup_domain_size, gb200, jnp.asarray(8.0)
    )  # KV over NICs
    w = _open(2.0)
    ttfts = []
    for bw in (25e9, 50e9, 100e9, 400e9):
        hw = eqx.tree_at(lambda h: h.fabric.scaleout_bw_bytes_per_s, small, jnp.asarray(bw))
        ttfts.append(float(_metrics(_scheme(llama70), hw, llama70, w, 0.0).ttft_s))
    assert all(b <= a for a, b in zip(ttfts, ttfts[1:]))
    caps = []
    for d in (1.0, 2.0, 4.0, 8.0):
        m = _metrics(_scheme(llama70, p_inst=16.0, d_inst=d), gb200, llama70, _open(1e4), 0.0)
        caps.append(float(m.throughput_tok_s))
    assert all(b >= a for a, b in zip(caps, caps[1:]))


def _fd(f, x, rel=1e-6):
    h = rel * abs(x)
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.slow  # ~20 s of compile on 2 CPU cores
def test_gradients_match_finite_differences(gb200, llama70):
    # closed loop (the open loop's gradients are checked finite below)
    tau = 0.05
    w = _closed(96.0)
    small = eqx.tree_at(lambda h: h.fabric.scaleup_domain_size, gb200, jnp.asarray(8.0))

    def metric(hbm, nic, d_inst):
        hw = eqx.tree_at(
            lambda h: (h.accel.hbm.bw_bytes_per_s, h.fabric.scaleout_bw_bytes_per_s),
            small,
            (hbm, nic),
        )
        m = _scheme(llama70, d_inst=d_inst).metrics(hw, llama70, w, tau)
        return m.ttft_s + 100.0 * m.tpot_s + 1e-4 * m.throughput_tok_s

    x0 = (8e12, 50e9, 4.0)
    g = jax.jit(jax.grad(metric, argnums=(0, 1, 2)))(*x0)
    f = jax.jit(metric)
    for i in range(3):
        args = list(x0)

        def fi(v, i=i, args=args):
            a = list(args)
            a[i] = v
            return float(f(*a))

        fd = _fd(fi, x0[i])
        np.testing.assert_allclose(float(g[i]), fd, rtol=2e-3, atol=1e-12 * abs(fd) + 1e-15)


def test_finite_gradients_when_saturated_or_out_of_memory(gb200, llama70):
    def penalty(d_batch, rate):
        s = _scheme(llama70, p_inst=1.0, d_inst=1.0, d_batch=d_batch)
        return s.metrics(gb200, llama70, _open(rate), 0.05).penalty

    # saturated open loop, and a decode batch whose KV cannot fit (4096 x 2500 tokens)
    grad = jax.jit(jax.grad(penalty, argnums=(0, 1)))
    for d_batch, rate in ((64.0, 1e4), (4096.0, 1e3), (128.0, 2.0)):
        g = grad(jnp.asarray(d_batch), jnp.asarray(rate))
        assert all(np.isfinite(float(v)) for v in g)
    m = _metrics(_scheme(llama70, d_batch=4096.0), gb200, llama70, _open(1e4), 0.0)
    assert float(m.memory_ok) == 0.0 and all_finite(m)


def test_jit_equals_vmap(gb200, llama70):
    w = _closed(128.0)

    plan = _scheme(llama70).prefill_plan

    def build(x):
        pd = eqx.tree_at(lambda p: p.tp, plan, x[0])
        return Disaggregated(pd, plan, x[1], x[2], x[3], x[4])

    xs = jnp.array([[4.0, 2.0, 4.0, 4.0, 128.0], [8.0, 1.0, 2.0, 8.0, 64.0]])
    batched = jax.jit(jax.vmap(lambda x: build(x).metrics(gb200, llama70, w)))(xs)
    for i in range(2):
        one = _metrics(build(xs[i]), gb200, llama70, w, 0.0)
        for k in ("ttft_s", "tpot_s", "throughput_tok_s", "decode_batch", "memory_margin_frac"):
            np.testing.assert_allclose(getattr(batched, k)[i], getattr(one, k), rtol=1e-9)
