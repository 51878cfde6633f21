"""Pipeline stage types: hand-derived goldens, FD gradients, edge cases, jit/vmap."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.deploy import kv_transfer_bytes
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.pipeline import (
    AgentLoop,
    CPUWork,
    Decode,
    Encode,
    KVRetrieval,
    VectorIndex,
    VectorSearch,
    breakeven_bandwidth_bytes_per_s,
    default_kv_tiers,
    index_memory_bytes,
    search_work,
    tier_fetch_s,
    vector_search_cost,
)
from diffperf.pipeline._config import SMALL_MODELS
from diffperf.stages import decode_batch, iteration, make_plan, prefill_batch

from .helpers import all_finite, finite_difference_grad


@pytest.fixture(scope="module")
def cpu():
    return load_hardware("xeon-8480")


@pytest.fixture(scope="module")
def gpu():
    return load_hardware("h100-sxm")


@pytest.fixture(scope="module")
def llm():
    m = load_model("llama-3.1-8b")
    return m, make_plan(m)


# --------------------------------------------------------------------------------------------
# vector search
# --------------------------------------------------------------------------------------------


def test_flat_search_golden(cpu):
    # Xeon 8480 socket: fp32 peak 7.2e12 FLOP/s x eff 0.7; DDR5 307.2e9 B/s x eff 0.7;
    # launch 10 us (cpu profile). N = 1e6 vectors of d = 768 fp32, one query:
    # flop = 2 N d = 1.536e9 -> 1.536e9 / 5.04e12 = 3.0476e-4 s
    # bytes = N d 4 + d 4 = 3,072,003,072 -> / 215.04e9 = 1.428573e-2 s (memory bound)
    e = cpu.accel.eff.gemm  # the "cpu" profile values these goldens use
    assert (float(e.compute_eff_fp32), float(e.mem_eff), float(e.launch_s)) == (0.7, 0.7, 1e-5)
    idx = VectorIndex("flat", 1e6, 768.0)
    c = vector_search_cost(cpu, idx, 1.0)
    assert float(c.flop) == pytest.approx(1.536e9, rel=1e-12)
    assert float(c.bytes) == pytest.approx(3_072_003_072.0, rel=1e-12)
    assert float(c.compute_s) == pytest.approx(1.536e9 / 5.04e12, rel=1e-9)
    assert float(c.time_s) == pytest.approx(3_072_003_072.0 / 215.04e9 + 1e-5, rel=1e-9)


def test_ivfpq_work_golden():
    # N = 1,024,000, L = 1024 lists (1000 codes each), p = 8 probes, m = 16 bytes, d = 128:
    # coarse 2 L d = 262,144; tables 2·256·d·p = 524,288; scan p·1000·m·8 = 1,024,000 FLOP
    # bytes: centroids L d 4 = 524,288; PQ codebooks 256 d 4 = 131,072;
    #        8 lists x 1000 x (16 + 8) = 192,000; query d 4 = 512  -> 847,872
    idx = VectorIndex("ivf_pq", 1_024_000.0, 128.0, 4.0, 1024.0, 8.0, 16.0)
    flop, bytes_, chain = search_work(idx, jnp.asarray(1.0))
    assert float(flop) == pytest.approx(262_144 + 524_288 + 1_024_000, rel=1e-12)
    assert float(bytes_) == pytest.approx(847_872.0, rel=1e-12)
    assert float(chain) == 0.0
    # two queries touch L (1 - (1 - p/L)^2) = 16 - 64/1024 = 15.9375 distinct lists
    _, b2, _ = search_work(idx, jnp.asarray(2.0))
    touched = 15.9375
    want = 524_288 + 131_072 + touched * 1000 * 24 + 2 * 512
    assert float(b2) == pytest.approx(want, rel=1e-12)


def test_graph_work_golden(cpu):
    # HNSW, R = 32 links, N = 32^4 so log N / log R = 4 upper layers, ef = 64, d = 128 fp32:
    # visits = R (ef + 4) = 2176; flop = 2 d visits = 557,056; a vector is 512 B = 8 lines;
    # bytes = 2176 x 512 + (ef + 4) R 4 = 1,114,112 + 8,704, plus the 512-B query;
    # dependent chain of 68 DDR5 latencies (0.11 us each).
    idx = VectorIndex("graph", 32.0**4, 128.0, degree=32.0, ef_search=64.0)
    flop, bytes_, chain = search_work(idx, jnp.asarray(1.0))
    assert float(flop) == pytest.approx(557_056.0, rel=1e-12)
    assert float(bytes_) == pytest.approx(1_114_112 + 8_704 + 512, rel=1e-12)
    assert float(chain) == pytest.approx(68.0, rel=1e-12)
    c = vector_search_cost(cpu, idx, 1.0)
    roof = max(557_056 / 5.04e12, (1_114_112 + 8_704 + 512) / 215.04e9)
    assert float(c.time_s) == pytest.approx(roof + 1e-5 + 68 * 0.11e-6, rel=1e-9)


def test_index_memory_golden():
    # flat: N d 4; IVF-PQ: N (m + 8) + L d 4 + 256 d 4; graph: N (d 4 + 2 R 4)
    assert float(index_memory_bytes(VectorIndex("flat", 1e6, 768.0))) == 3.072e9
    ivf = VectorIndex("ivf_pq", 1e8, 1024.0, 4.0, 65536.0, 64.0, 64.0)
    assert float(index_memory_bytes(ivf)) == pytest.approx(
        1e8 * 72 + 65536 * 4096 + 256 * 4096, rel=1e-12
    )
    g = VectorIndex("graph", 1e6, 128.0, degree=16.0)
    assert float(index_memory_bytes(g)) == pytest.approx(1e6 * (512 + 128), rel=1e-12)


def test_index_kind_error():
    with pytest.raises(ValueError, match="index kind = 'lsh'"):
        VectorIndex("lsh", 1e6, 128.0)


def test_search_physics_and_vmap(cpu):
    # more probes or a bigger corpus never make a search faster; vmap == loop
    base = VectorIndex("ivf_pq", 1e7, 768.0, 4.0, 4096.0, 16.0, 48.0)

    def t(nprobe, n):
        idx = eqx.tree_at(lambda i: (i.nprobe, i.corpus_vectors), base, (nprobe, n))
        return vector_search_cost(cpu, idx, 8.0).time_s

    probes = jnp.array([1.0, 4.0, 16.0, 64.0, 256.0])
    ts = jax.jit(jax.vmap(lambda p: t(p, 1e7)))(probes)
    assert np.all(np.diff(np.asarray(ts)) > 0)
    for i, p in enumerate(probes):
        assert float(ts[i]) == pytest.approx(float(t(p, 1e7)), rel=1e-12)
    assert float(t(16.0, 1e8)) > float(t(16.0, 1e7))


def test_search_fd_gradients(cpu):
    base = VectorIndex("ivf_pq", 1e7, 768.0, 4.0, 4096.0, 16.0, 48.0)

    def f(x):
        return vector_search_cost(cpu, eqx.tree_at(lambda i: i.nprobe, base, x), 32.0).time_s

    g = float(jax.grad(f)(24.0))
    assert g > 0
    assert g == pytest.approx(finite_difference_grad(lambda x: float(f(x)), 24.0), rel=1e-5)
    # graph: d time / d ef_search, with the latency chain
    gr = VectorIndex("graph", 1e7, 768.0, degree=32.0, ef_search=100.0)

    def h(x):
        return vector_search_cost(cpu, eqx.tree_at(lambda i: i.ef_search, gr, x), 4.0).time_s

    assert float(jax.grad(h)(100.0)) == pytest.approx(
        finite_difference_grad(lambda x: float(h(x)), 100.0), rel=1e-5
    )


# --------------------------------------------------------------------------------------------
# KV tiers and retrieval
# --------------------------------------------------------------------------------------------


def test_kv_tiers_from_preset(gpu):
    t = {x.name: x for x in default_kv_tiers(gpu)}
    assert float(t["hbm"].bw_bytes_per_s) == 3.35e12  # H100 datasheet via the preset
    assert float(t["host_dram"].bw_bytes_per_s) == 64e9  # PCIe Gen5 x16
    assert float(t["cxl"].bw_bytes_per_s) == 32e9  # min(PCIe, CXL x8)
    assert float(t["cxl"].latency_s) == pytest.approx(2.5e-6)
    assert float(t["local_ssd"].bw_bytes_per_s) == 7e9
    assert float(t["remote"].bw_bytes_per_s) == 50e9  # the preset's 400 Gb/s NIC


def test_tier_fetch_golden(gpu):
    host = default_kv_tiers(gpu)[1]  # 64 GB/s, 2 us
    nbytes = 131_072_000.0  # 1000 tokens of Llama-3.1-8B bf16 KV (131,072 B/token)
    # one request, certain hit: latency + bytes / bw = 2e-6 + 2.048e-3
    assert float(tier_fetch_s(host, 1.0, 1.0, nbytes)) == pytest.approx(2.050e-3, rel=1e-12)
    # 4 requests, hit 1/2: latency paid when any hits (1 - 0.5^4 = 0.9375) + 2 prefixes moved
    want = 0.9375 * 2e-6 + 0.5 * 4 * nbytes / 64e9
    assert float(tier_fetch_s(host, 0.5, 4.0, nbytes)) == pytest.approx(want, rel=1e-12)


def test_breakeven_golden():
    # 1 GB of KV, recompute 0.1 s, latency 0.02 s -> 1e9 / 0.08 = 1.25e10 B/s
    assert float(breakeven_bandwidth_bytes_per_s(1e9, 0.1, 0.02)) == pytest.approx(1.25e10)
    assert np.isinf(float(breakeven_bandwidth_bytes_per_s(1e9, 0.01, 0.02)))


def _kv(llm, w=1.0, rates=(1.0,), tiers=("host_dram",), prefix=1000.0):
    m, plan = llm
    return KVRetrieval(m, plan, prefix, jnp.asarray(rates, dtype=float), tiers, w)


def test_kv_retrieval_fetch_and_recompute(gpu, llm):
    tiers = default_kv_tiers(gpu)
    m, plan = llm
    # Llama-3.1-8B: 32 layers x 8 KV heads x 128 x (K, V) x 2 B = 131,072 B per token
    assert float(kv_transfer_bytes(m, 1000.0, "bf16")) == 131_072_000.0
    fetch = _kv(llm).cost(gpu, tiers, 1.0, 0.0)
    assert float(fetch.service_s) == pytest.approx(2e-6 + 131_072_000.0 / 64e9, rel=1e-12)
    assert float(fetch.host_bytes) == 131_072_000.0
    # w = 0: every request recomputes its prefix = a 1000-token prefill
    rec = _kv(llm, w=0.0).cost(gpu, tiers, 1.0, 0.0)
    pre = iteration(gpu, m, plan, prefill_batch(1.0, 1000.0), 0.0).latency_s
    assert float(rec.service_s) == pytest.approx(float(pre), rel=1e-12)
    assert float(rec.host_bytes) == 0.0
    # half-half: 0.5 fetch + prefill of half a request
    mix = _kv(llm, w=0.5).cost(gpu, tiers, 1.0, 0.0)
    half = iteration(gpu, m, plan, prefill_batch(0.5, 1000.0), 0.0).latency_s
    want = 0.5 * (2e-6 + 131_072_000.0 / 64e9) + float(half)
    assert float(mix.service_s) == pytest.approx(want, rel=1e-12)
    # recomputing 1000 tokens of an 8B model on an H100 is slower than PCIe at 64 GB/s
    assert float(rec.service_s) > float(fetch.service_s)


def test_kv_retrieval_gradients_finite_and_fd(gpu, llm):
    tiers = default_kv_tiers(gpu)

    def f(w, h0, h1):
        st = _kv(llm, w=w, rates=(0.0, 0.0), tiers=("host_dram", "remote"))
        st = eqx.tree_at(lambda s: s.hit_rates, st, jnp.stack([h0, h1]))
        return st.cost(gpu, tiers, 4.0, 0.05).service_s

    for args in [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, 0.5, 0.5), (0.5, 1.0, 0.0)]:
        g = jax.grad(f, argnums=(0, 1, 2))(*map(jnp.asarray, args))
        assert all(np.isfinite(float(x)) for x in g), args
    # FD against AD through the fetch path (the recompute path goes through the step model's
    # straight-through tile rounding, whose AD gradient is by design the relaxed one)
    st = _kv(llm, w=0.37, rates=(0.3, 0.2), tiers=("host_dram", "remote"))

    def g_bw(bw):
        t = list(tiers)
        t[1] = eqx.tree_at(lambda x: x.bw_bytes_per_s, t[1], bw)
        return st.cost(gpu, tuple(t), 4.0, 0.0).service_s

    g = float(jax.grad(g_bw)(64e9))
    assert g < 0
    assert g == pytest.approx(finite_difference_grad(lambda b: float(g_bw(b)), 64e9), rel=1e-5)
    # retrieving more (w up) when fetch is cheaper than recompute lowers the time
    assert float(jax.grad(f)(0.37, 0.3, 0.2)) < 0


# --------------------------------------------------------------------------------------------
# LLM, encoder, agent and CPU stages
# --------------------------------------------------------------------------------------------


def test_decode_is_n_steps_at_mean_context(gpu, llm):
    m, plan = llm
    st = Decode(m, plan, 1000.0, 200.0, 800.0)
    c = st.cost(gpu, (), 8.0, 0.0)
    # 1000 decode iterations at the mean context 1000 + 1000/2
    step = float(iteration(gpu, m, plan, decode_batch(8.0, 1500.0), 0.0).latency_s)
    assert float(c.service_s) == pytest.approx(1000 * step, rel=1e-12)
    assert float(c.join_s) == pytest.approx(step, rel=1e-12)
    assert float(c.first_output_s) == pytest.approx(801 * step, rel=1e-12)  # after thinking
    assert float(st.devices_per_instance) == 1.0


def test_decode_fd_gradient_thinking(gpu, llm):
    m, plan = llm

    def f(x):
        return Decode(m, plan, 1000.0, 200.0, x).cost(gpu, (), 8.0, 0.0).service_s

    g = float(jax.grad(f)(500.0))
    assert g > 0
    assert g == pytest.approx(finite_difference_grad(lambda x: float(f(x)), 500.0), rel=1e-5)


def test_agent_loop_single_call_is_prefill_plus_decode(gpu, llm):
    m, plan = llm
    st = AgentLoop(m, plan, 1.0, 1000.0, 100.0, 0.0, 0.7)
    c = st.cost(gpu, (), 2.0, 0.0)
    # one call: prefill 1000 new tokens (nothing cached), then 100 steps at 1000 + 100/2
    pre = float(iteration(gpu, m, plan, prefill_batch(2.0, 1000.0, 0.0), 0.0).latency_s)
    dec = float(iteration(gpu, m, plan, decode_batch(2.0, 1050.0), 0.0).latency_s)
    assert float(c.service_s) == pytest.approx(pre + 100 * dec, rel=1e-12)
    assert float(c.idle_s) == 0.0  # no tool wait after the last call
    three = AgentLoop(m, plan, 3.0, 1000.0, 100.0, 50.0, 0.7).cost(gpu, (), 2.0, 0.0)
    assert float(three.idle_s) == pytest.approx(1.4)  # two tool waits of 0.7 s


def test_encode_is_one_prefill(gpu):
    emb = SMALL_MODELS["bge-small-en-v1.5"]()
    plan = make_plan(emb)
    c = Encode(emb, plan, 128.0).cost(gpu, (), 16.0, 0.0)
    want = iteration(gpu, emb, plan, prefill_batch(16.0, 128.0), 0.0).latency_s
    assert float(c.service_s) == pytest.approx(float(want), rel=1e-12)


def test_cpu_work_golden(cpu):
    st = CPUWork(per_request_s=2e-3, parallel_lanes=4.0)
    # 8 requests over 4 lanes: 2 rounds of 2 ms; one request: 2 ms
    assert float(st.cost(cpu, (), 8.0, 0.0).service_s) == pytest.approx(4e-3)
    assert float(st.cost(cpu, (), 1.0, 0.0).service_s) == pytest.approx(2e-3)
    # 1 GB read per request at 307.2e9 x 0.7 B/s
    mem = CPUWork(bytes_per_request=1e9).cost(cpu, (), 1.0, 0.0)
    assert float(mem.service_s) == pytest.approx(1e9 / 215.04e9, rel=1e-12)
    assert float(mem.memory_s) == pytest.approx(1e9 / 215.04e9, rel=1e-12)


def test_vector_search_stage_grads_finite_at_edges(cpu):
    st = VectorSearch(VectorIndex("ivf_pq", 1e6, 128.0, 4.0, 1024.0, 1024.0, 16.0))

    def f(b, p):
        s = eqx.tree_at(lambda s: s.index.nprobe, st, p)
        return s.cost(cpu, (), b, 0.0).service_s

    g = jax.grad(f, argnums=(0, 1))(jnp.asarray(1.0), jnp.asarray(1024.0))  # probe every list
    assert all_finite(g)
