"""Attention-FFN disaggregation: pipeline law, goldens, Little's law, gradients, transforms."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.deploy import AFD, Workload, afd_pipeline_time_s
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.stages import make_plan


@pytest.fixture(scope="module")
def gb200():
    return load_hardware("gb200")


@pytest.fixture(scope="module")
def dsv3():
    return load_model("deepseek-v3")


@pytest.fixture(scope="module")
def pplan(dsv3):
    return make_plan(dsv3, tp=8, dtype="fp8_block", kv_dtype="fp8")


def _afd(pplan, x):
    """x = (attention_devices, ffn_devices, microbatches, decode_batch)."""
    return AFD(
        pplan,
        2.0,
        4.0,
        attention_devices=x[0],
        ffn_devices=x[1],
        microbatches=x[2],
        decode_batch=x[3],
        weight_dtype="fp8_block",
        moe_dtype="fp8_block",
        kv_dtype="fp8",
    )


def _simulate(t, m, layers):
    """Event simulation of m micro-batches cycling FIFO through single-server stages."""
    free = [0.0] * len(t)
    ready = [0.0] * m
    for _ in range(layers):
        for s, ts in enumerate(t):
            for j in range(m):
                ready[j] = free[s] = max(ready[j], free[s]) + ts
    return max(ready)


def test_pipeline_law_goldens():
    t = jnp.array([3.0, 1.0, 2.0, 1.0])  # attention, dispatch, experts, combine (per mb)
    # m = 1: no overlap, L x sum = 10 x 7 = 70
    np.testing.assert_allclose(afd_pipeline_time_s(t, 1.0, 10.0), 70.0)
    # m = 3: period max(7, 3*3 = 9) = 9 per layer, fill min(7-3, 2*3) = 4 -> 94
    np.testing.assert_allclose(afd_pipeline_time_s(t, 3.0, 10.0), 94.0)
    # exact against an event simulation (deterministic, FIFO) for several m and L
    rng = np.random.default_rng(0)
    for _ in range(20):
        ts = rng.uniform(0.1, 1.0, 4)
        m, layers = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        np.testing.assert_allclose(
            afd_pipeline_time_s(jnp.asarray(ts), float(m), float(layers)),
            _simulate(list(ts), m, layers),
            rtol=1e-12,
        )
    # balanced stages, whole-batch stage time 1 split over m micro-batches: L*m*(1/m) +
    # fill 3/m -> L x the max stage as m grows (61 layers: 61 + 3/m)
    for m in (4.0, 64.0, 1e4):
        tb = jnp.full((4,), 1.0 / m)
        np.testing.assert_allclose(afd_pipeline_time_s(tb, m, 61.0), 61.0 + 3.0 / m)


def test_m1_step_is_sum_of_stages(gb200, dsv3, pplan):
    # m = 1: TPOT = dense layers + L_moe x (attention + dispatch + experts + combine) + head
    s = _afd(pplan, (8.0, 8.0, 1.0, 64.0))
    st = s.decode_step(gb200, dsv3, 64.0, 4500.0)
    gpu = st.dense_s + st.attention_s + st.dispatch_s + st.ffn_s + st.combine_s + st.head_s
    np.testing.assert_allclose(st.tpot_s, gpu, rtol=1e-12)
    # (m = 2 is not always faster: each micro-batch re-reads the touched experts' weights)


def test_dense_model_is_rejected(gb200):
    llama = load_model("llama-3.1-8b")
    s = _afd(make_plan(llama, tp=1), (4.0, 4.0, 2.0, 32.0))
    w = Workload(isl_tokens=1000.0, osl_tokens=100.0, concurrency=8.0)
    with pytest.raises(ValueError, match="AFD needs an MoE model"):
        s.metrics(gb200, llama, w)


_W_CLOSED = Workload(isl_tokens=4000.0, osl_tokens=1000.0, concurrency=256.0)


def test_closed_loop_littles_law_and_memory(gb200, dsv3, pplan):
    f = eqx.filter_jit(lambda s: s.metrics(gb200, dsv3, _W_CLOSED, 0.0))
    for n_att, batch in ((16.0, 64.0), (16.0, 8.0)):
        m = f(_afd(pplan, (n_att, 16.0, 2.0, batch)))
        x = m.throughput_tok_s / 1000.0
        np.testing.assert_allclose(x * m.request_latency_s, 256.0, rtol=1e-6)
        # throughput = instances x A x B / TPOT decode tokens/s = X (OSL - 1)
        np.testing.assert_allclose(x * 999.0, n_att * m.decode_batch / m.tpot_s, rtol=1e-9)
        assert 0.0 < float(m.memory_margin_frac) < 1.0
    # devices = prefill 2 x 8 + 1 x (16 + 16)
    np.testing.assert_allclose(m.devices, 48.0)


@pytest.mark.slow  # each AFD gradient compiles in ~1-2 min on 2 CPU cores
def test_gradients_match_finite_differences_and_stay_finite(gb200, dsv3, pplan):
    tau = 0.05

    def workload(rate):
        return Workload(
            isl_tokens=4000.0, osl_tokens=1000.0, arrival_rate_per_s=rate, load_mode="open"
        )

    def metric(x):
        m = _afd(pplan, x).metrics(gb200, dsv3, workload(5.0), tau)
        return m.tpot_s * 1e3 + m.ttft_s + m.memory_margin_frac + m.penalty

    x0 = jnp.array([16.0, 16.0, 2.5, 96.0])  # A, F, m, decode_batch (open: B < max)
    f = jax.jit(metric)
    g = jax.jit(jax.grad(metric))(x0)
    for i in range(4):
        h = 1e-6 * float(x0[i])
        e = jnp.zeros(4).at[i].set(h)
        fd = (float(f(x0 + e)) - float(f(x0 - e))) / (2 * h)
        np.testing.assert_allclose(float(g[i]), fd, rtol=2e-3, atol=1e-9)
    assert float(g[2]) != 0.0  # micro-batches matter

    # saturated (B = max) with a KV cache that cannot fit: still finite
    def penalty(x):
        return _afd(pplan, x).metrics(gb200, dsv3, workload(1e4), tau).penalty

    g_bad = jax.jit(jax.grad(penalty))(jnp.array([8.0, 32.0, 3.0, 4096.0]))
    assert bool(jnp.all(jnp.isfinite(g_bad)))


def test_jit_equals_vmap(gb200, dsv3, pplan):
    xs = jnp.array([[16.0, 16.0, 2.0, 64.0], [8.0, 32.0, 3.0, 4096.0]])
    batched = jax.jit(jax.vmap(lambda x: _afd(pplan, x).metrics(gb200, dsv3, _W_CLOSED)))(xs)
    one = eqx.filter_jit(lambda s: s.metrics(gb200, dsv3, _W_CLOSED, 0.0))
    for i in range(2):
        m = one(_afd(pplan, xs[i]))
        for k in ("ttft_s", "tpot_s", "throughput_tok_s", "decode_batch", "memory_margin_frac"):
            np.testing.assert_allclose(getattr(batched, k)[i], getattr(m, k), rtol=1e-9)
