"""Pipeline evaluation: queueing/batching goldens, bottleneck throughput, routing, TTFT,
memory-bandwidth contention, jit/vmap, FD gradients, optimisation hooks, TOML and CLI."""

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffperf.cli import main
from diffperf.deploy import prob_wait
from diffperf.hardware import load_hardware
from diffperf.pipeline import (
    Batching,
    CPUWork,
    Engine,
    Pipeline,
    PipelineConfigError,
    PipelineError,
    PipelineSLO,
    PlacedStage,
    Route,
    default_kv_tiers,
    design_loss,
    evaluate,
    initial_design,
    list_examples,
    load_pipeline,
)

from .helpers import all_finite, finite_difference_grad


@pytest.fixture(scope="module")
def cpu_engine():
    hw = load_hardware("xeon-8480")
    return Engine("cpu", hw, 1.0, default_kv_tiers(hw), True)


def _cpu(name, s, batching, share=1.0, lanes=1.0, bytes_=0.0, first=False):
    return PlacedStage(
        name, CPUWork(0.0, bytes_, s, lanes), "cpu", batching, share, first_token=first
    )


def _chain(engine, stages, lam, routes=None, slo=PipelineSLO()):
    if routes is None:
        routes = tuple(Route(a.name, b.name, 1.0) for a, b in zip(stages[:-1], stages[1:]))
    return Pipeline(tuple(stages), tuple(routes), (engine,), lam, slo)


def test_md1_golden(cpu_engine):
    # One stage, deterministic 10 ms service, batch 1, Poisson 50/s: rho = 0.5 and
    # Pollaczek-Khinchine for M/D/1: W = S + rho S / (2 (1 - rho)) = 10 + 5 = 15 ms.
    p = _chain(cpu_engine, [_cpu("a", 0.01, Batching("continuous", 1.0))], 50.0)
    r = evaluate(p)
    assert float(r.e2e_latency_s) == pytest.approx(0.015, rel=1e-12)
    assert float(r.utilisation[0]) == pytest.approx(0.5, rel=1e-12)
    assert float(r.throughput_per_s) == pytest.approx(100.0, rel=1e-12)


def test_static_batch_golden(cpu_engine):
    # Static batches of 4 over 4 lanes: S(4) = 10 ms, capacity 4 / 0.01 = 400/s. At 100/s:
    # fill wait (B-1)/(2 lam) = 15 ms; batches arrive every 4 Poisson arrivals (SCV 1/4) at
    # rho = 100 x 0.01 / 4 = 0.25: Sakasegawa c = 1, P_w = rho,
    # Wq = rho / (1 - rho) x S x (1/4 + 0)/2 = (1/3) x 0.01 x 0.125 = 4.1667e-4 s.
    p = _chain(cpu_engine, [_cpu("a", 0.01, Batching("static", 4.0), lanes=4.0)], 100.0)
    r = evaluate(p)
    assert float(r.capacity_per_s[0]) == pytest.approx(400.0, rel=1e-12)
    want = 0.015 + 0.01 * 0.125 / 3.0 + 0.01
    assert float(r.e2e_latency_s) == pytest.approx(want, rel=1e-12)


def test_window_batch_golden(cpu_engine):
    # 20 ms window, at most 8, 4 lanes, 100/s: lam W = 2 -> mean non-empty batch
    # b = 2 / (1 - e^-2) = 2.31304 (< 4 lanes, so S(b) = 10 ms; S(8) = 20 ms).
    # Non-empty windows: share 1 - e^-2 = 0.864665, inter-arrival SCV e^-2;
    # rho_b = 0.864665 x 0.01 / 0.02 = 0.432332; chord slope beta = 0.01 / (8 - b);
    # service SCV = beta^2 x 2 / 0.01^2; Sakasegawa c = 1: Wq = rho/(1-rho) S (ca2+cs2)/2.
    # latency = W/2 + Wq + S; capacity at this load = lam / rho_b = 231.30/s.
    p = _chain(cpu_engine, [_cpu("a", 0.01, Batching("window", 8.0, 0.02), lanes=4.0)], 100.0)
    r = evaluate(p)
    b = 2.0 / (1.0 - math.exp(-2.0))
    rho = (1.0 - math.exp(-2.0)) * 0.01 / 0.02
    beta = 0.01 / (8.0 - b)
    cs2 = beta**2 * 2.0 / 1e-4
    wq = rho / (1.0 - rho) * 0.01 * (math.exp(-2.0) + cs2) / 2.0
    assert float(r.batch[0]) == pytest.approx(b, rel=1e-12)
    assert float(r.e2e_latency_s) == pytest.approx(0.01 + wq + 0.01, rel=1e-9)
    assert float(r.capacity_per_s[0]) == pytest.approx(100.0 / rho, rel=1e-9)
    # a window shorter than a batch's service piles batches up: infeasible at high load
    short = eqx.tree_at(lambda q: q.stages[0].batching.window_s, p, 0.002)
    assert not bool(evaluate(eqx.tree_at(lambda q: q.arrival_rate_per_s, short, 300.0)).feasible)


def test_dynamic_batch_fixed_point(cpu_engine):
    # dynamic batching of at most 2 on 2 lanes: S(1) = S(2) = 10 ms (flat chord). The batch
    # solves b = 1 + P_w(rho_b) lam S / c with P_w = rho_b = lam S / b for one instance; at
    # 100/s, lam S = 1: b = 1 + 1/b -> b^2 - b - 1 = 0 -> b = (1 + sqrt 5)/2 (golden ratio).
    p = _chain(cpu_engine, [_cpu("a", 0.01, Batching("continuous", 2.0), lanes=2.0)], 100.0)
    r = evaluate(p)
    assert float(r.batch[0]) == pytest.approx((1 + math.sqrt(5)) / 2, rel=1e-3)
    assert float(prob_wait(0.5, 1.0)) == pytest.approx(0.5)  # P_w = rho for one server


def test_chain_sum_routing_and_ttft(cpu_engine):
    # a -> {b (0.3), c (0.7)} -> d; a router-style split and merge.
    st = [
        _cpu("a", 0.001, Batching("continuous", 1.0), share=0.25),
        _cpu("b", 0.002, Batching("continuous", 1.0), share=0.25, first=True),
        _cpu("c", 0.004, Batching("continuous", 1.0), share=0.25),
        _cpu("d", 0.003, Batching("continuous", 1.0), share=0.25),
    ]
    routes = (
        Route("a", "b", 0.3),
        Route("a", "c", 0.7),
        Route("b", "d", 1.0),
        Route("c", "d", 1.0),
    )
    p = _chain(cpu_engine, st, 5.0, routes)
    r = evaluate(p)
    assert np.allclose(np.asarray(r.visits), [1.0, 0.3, 0.7, 1.0])
    lat = np.asarray(r.latency_s)
    # mean e2e of a routing DAG = sum of visits x stage latency
    assert float(r.e2e_latency_s) == pytest.approx(float(np.dot(r.visits, lat)), rel=1e-12)
    # TTFT: through b it ends at b's first output; through c (no first-token stage) it is
    # the whole path a -> c -> d
    wait_b = float(r.wait_s[1])
    want = lat[0] + 0.3 * (wait_b + 0.002) + 0.7 * (lat[2] + lat[3])
    assert float(r.ttft_s) == pytest.approx(want, rel=1e-12)
    # bottleneck: capacity per request = instances / (S v) -> c: 0.25 / (0.004 x 0.7) = 89.3
    caps = np.asarray(r.capacity_per_s) / np.asarray(r.visits)
    assert float(r.throughput_per_s) == float(np.min(caps))  # exact at tau = 0
    assert p.stages[int(r.bottleneck)].name == "d"  # 0.25 / 0.003 = 83.3 < 89.3


def test_bottleneck_smooth_min_limit(cpu_engine):
    st = [
        _cpu("a", 0.010, Batching("continuous", 1.0), share=0.5),
        _cpu("b", 0.012, Batching("continuous", 1.0), share=0.5),
    ]
    p = _chain(cpu_engine, st, 10.0)
    exact = float(evaluate(p, 0.0).throughput_per_s)
    assert exact == pytest.approx(0.5 / 0.012, rel=1e-12)
    prev = 0.0
    for tau in (0.2, 0.05, 0.01, 0.001):
        x = float(evaluate(p, tau).throughput_per_s)
        assert exact / 2**tau - 1e-9 <= x <= exact  # smooth min: below, within n**tau
        assert x >= prev
        prev = x


def test_shared_memory_contention_golden(cpu_engine):
    # two memory-bound stages (1 GB per request) share one socket's DDR5: each alone takes
    # M = 1e9 / (307.2e9 x 0.7) = 4.6503 ms. At 20/s stage a keeps the memory busy
    # u_a = 20 x M = 0.0930 of the time, so b sees 1 - u_a of the bandwidth:
    # S_b = M / (1 - u_a).
    m = 1e9 / 215.04e9
    st = [
        _cpu("a", 0.0, Batching("continuous", 1.0), share=0.5, bytes_=1e9),
        _cpu("b", 0.0, Batching("continuous", 1.0), share=0.5, bytes_=1e9),
    ]
    r = evaluate(_chain(cpu_engine, st, 20.0))
    assert float(r.contention[1]) == pytest.approx(1.0 / (1.0 - 20.0 * m), rel=1e-9)
    assert float(r.service_s[1]) == pytest.approx(m / (1.0 - 20.0 * m), rel=1e-9)
    # the same stages on a partitioned engine do not contend
    part = Engine("cpu", cpu_engine.hw, 1.0, cpu_engine.kv_tiers, False)
    r2 = evaluate(_chain(part, st, 20.0))
    assert float(r2.contention[1]) == 1.0


def test_host_kv_fetch_contends_with_cpu_stage(cpu_engine):
    # A GPU stage fetching KV prefixes from host DRAM (host_engine = "cpu") loads the CPU
    # socket's memory: bge-small KV = 12 layers x 2 x 12 heads x 32 x 2 B = 18,432 B/token,
    # 10,000-token prefixes = 184.32 MB; at 50/s that is 9.216 GB/s of the socket's
    # 307.2 GB/s: u = 0.03, so a memory-bound CPU stage runs 1 / (1 - 0.03) slower.
    from diffperf.pipeline import KVRetrieval
    from diffperf.pipeline._config import SMALL_MODELS
    from diffperf.stages import make_plan

    gpu = load_hardware("h100-sxm")
    g = Engine("gpu", gpu, 1.0, default_kv_tiers(gpu), False)
    emb = SMALL_MODELS["bge-small-en-v1.5"]()
    kv = KVRetrieval(emb, make_plan(emb), 10_000.0, jnp.asarray([1.0]), ("host_dram",), 1.0)
    st = (
        _cpu("scan", 0.0, Batching("continuous", 1.0), bytes_=1e8),
        PlacedStage("fetch", kv, "gpu", Batching("continuous", 1.0), 1.0, host_engine="cpu"),
    )
    r = evaluate(Pipeline(st, (Route("scan", "fetch", 1.0),), (cpu_engine, g), 50.0))
    u = 50.0 * 184.32e6 / 307.2e9
    assert u == pytest.approx(0.03)
    assert float(r.contention[0]) == pytest.approx(1.0 / (1.0 - u), rel=1e-9)
    assert float(r.contention[1]) == 1.0  # the GPU engine does not share memory


def test_jit_vmap_consistency_and_traces(cpu_engine):
    st = [
        _cpu("a", 0.002, Batching("continuous", 4.0), share=0.5, lanes=2.0),
        _cpu("b", 0.003, Batching("static", 2.0), share=0.5, lanes=2.0),
    ]
    p = _chain(cpu_engine, st, 50.0)

    @eqx.filter_jit
    def e2e(lam):
        return evaluate(eqx.tree_at(lambda q: q.arrival_rate_per_s, p, lam)).e2e_latency_s

    lams = jnp.linspace(10.0, 200.0, 7)
    vm = jax.vmap(e2e)(lams)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def f(lam):
        return evaluate(eqx.tree_at(lambda q: q.arrival_rate_per_s, p, lam)).e2e_latency_s

    for i, lam in enumerate(lams):
        assert float(f(lam)) == pytest.approx(float(vm[i]), rel=1e-12)
    eager = evaluate(eqx.tree_at(lambda q: q.arrival_rate_per_s, p, lams[3])).e2e_latency_s
    assert float(eager) == pytest.approx(float(vm[3]), rel=1e-12)
    # static batching waits to fill: at light load more traffic *shortens* the latency
    assert float(vm[0]) > float(vm[3])


def test_fd_gradients_and_edges(cpu_engine):
    st = [
        _cpu("a", 0.002, Batching("continuous", 4.0), share=0.4, lanes=2.0),
        _cpu("b", 0.003, Batching("window", 8.0, 0.004), share=0.6, lanes=2.0, bytes_=2e8),
    ]
    p = _chain(cpu_engine, st, 60.0)

    @jax.jit
    def f(lam, share):
        q = eqx.tree_at(lambda q: (q.arrival_rate_per_s, q.stages[0].share), p, (lam, share))
        return evaluate(q, 0.05).e2e_latency_s

    grad = jax.jit(jax.grad(f, argnums=(0, 1)))
    g = grad(60.0, 0.4)
    assert float(g[0]) > 0 and float(g[1]) < 0
    assert float(g[0]) == pytest.approx(
        finite_difference_grad(lambda x: float(f(x, 0.4)), 60.0), rel=1e-4
    )
    assert float(g[1]) == pytest.approx(
        finite_difference_grad(lambda x: float(f(60.0, x)), 0.4), rel=1e-4
    )
    # saturated (utilisation > 1), tiny load and the 95% contention cap: finite gradients
    for lam in (1e-6, 5e3, 1e5):
        r = evaluate(eqx.tree_at(lambda q: q.arrival_rate_per_s, p, lam))
        assert all_finite(r)
        assert all_finite(grad(lam, 0.4))
    assert not bool(evaluate(eqx.tree_at(lambda q: q.arrival_rate_per_s, p, 5e3)).feasible)


def test_optimise_device_split_with_optax(cpu_engine):
    # a (5 ms) and b (15 ms) share one socket; the best split gives b three quarters
    st = [
        _cpu("a", 0.005, Batching("continuous", 1.0), share=0.5),
        _cpu("b", 0.015, Batching("continuous", 1.0), share=0.5),
    ]
    p = _chain(cpu_engine, st, 10.0, slo=PipelineSLO(e2e_s=1.0))
    d0 = initial_design(p)
    opt = optax.adam(0.1)

    @eqx.filter_jit
    def run(d):
        def body(carry, _):
            d, s = carry
            loss, g = eqx.filter_value_and_grad(lambda d: design_loss(d, p, 0.05))(d)
            u, s = opt.update(g, s, d)
            return (eqx.apply_updates(d, u), s), loss

        (d, _), losses = jax.lax.scan(body, (d, opt.init(d)), None, length=60)
        return d, losses

    d, losses = run(d0)
    assert float(losses[-1]) < float(losses[0])
    assert all_finite(d)
    share_b = float(jax.nn.softmax(d.share_logits)[1])
    assert share_b == pytest.approx(0.75, abs=0.03)  # 0.015 / (0.005 + 0.015)


# --------------------------------------------------------------------------------------------
# TOML and CLI
# --------------------------------------------------------------------------------------------

_TOML = """
arrival_rate_per_s = 5.0
[engines.cpu]
hardware = "xeon-8480"
count = 1
[[stages]]
name = "a"
type = "cpu"
engine = "cpu"
per_request_ms = 2.0
[[stages]]
name = "b"
type = "vector_search"
engine = "cpu"
index = "flat"
corpus_vectors = 1e5
dim = 128
"""


_CYCLE = """arrival_rate_per_s = 5.0
[[routes]]
from = "a"
to = "b"
[[routes]]
from = "b"
to = "a"
"""


def test_toml_loads_and_defaults(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text(_TOML)
    p = load_pipeline(f)
    assert [s.name for s in p.stages] == ["a", "b"]
    assert [float(s.share) for s in p.stages] == [0.5, 0.5]  # equal split by default
    assert p.engines[0].shared_memory  # CPU presets share memory by default
    assert (p.routes[0].src, p.routes[0].dst) == ("a", "b")  # chain in file order
    assert float(p.stages[0].stage.per_request_s) == pytest.approx(2e-3)
    assert bool(evaluate(p).feasible)


@pytest.mark.parametrize(
    "edit, match",
    [
        (("per_request_ms = 2.0", "per_request_ms = -2.0"), r"per_request_ms = -2.0 must be"),
        (
            ("per_request_ms = 2.0", "per_request_msx = 2.0"),
            r"unknown key\(s\) \['per_request_msx'\]",
        ),
        (('type = "cpu"', 'type = "gpu"'), r"type = 'gpu' must be one of"),
        (('hardware = "xeon-8480"', 'hardware = "xeon-9999"'), r"hardware = 'xeon-9999'"),
        (('engine = "cpu"\nper', 'engine = "tpu"\nper'), r"engine = 'tpu' is not one of"),
        (('index = "flat"', 'index = "lsh"'), r"index = 'lsh' must be one of"),
        (("dim = 128", 'dim = "wide"'), r"dim = 'wide' must be a number"),
        (("count = 1", "count = 1\nshared_memory = 3"), r"shared_memory = 3 must be true or false"),
        (("arrival_rate_per_s = 5.0", _CYCLE), r"exactly one entry stage"),
        (("[engines.cpu]", "[engines.cpu\n"), r"malformed TOML"),
    ],
    ids=[
        "negative",
        "unknown-key",
        "stage-type",
        "hardware",
        "engine",
        "index",
        "type",
        "bool",
        "cycle",
        "malformed",
    ],
)
def test_toml_errors(tmp_path, edit, match):
    f = tmp_path / "bad.toml"
    f.write_text(_TOML.replace(*edit, 1))
    with pytest.raises(PipelineConfigError, match=match) as e:
        load_pipeline(f)
    assert str(f) in str(e.value)


def test_toml_share_sum_and_missing(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(_TOML.replace("per_request_ms = 2.0", "per_request_ms = 2.0\nshare = 0.9"))
    with pytest.raises(PipelineConfigError, match=r"shares sum to 1.4 > 1"):
        load_pipeline(f)
    with pytest.raises(PipelineConfigError, match="neither an example"):
        load_pipeline(tmp_path / "missing.toml")
    assert issubclass(PipelineConfigError, ValueError)
    assert issubclass(PipelineError, ValueError)


def test_examples_listed():
    assert {"rag-reasoning", "multi-model-agent"} <= set(list_examples())


def test_cli_json_and_error(tmp_path, capsys):
    f = tmp_path / "p.toml"
    f.write_text(_TOML)
    png = tmp_path / "p.png"
    assert main(["pipeline", "--config", str(f), "--json", "--plot", str(png)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["bottleneck"] in ("a", "b")
    assert [s["name"] for s in rep["stages"]] == ["a", "b"]
    assert rep["feasible"] is True and png.stat().st_size > 0
    assert main(["pipeline", "--config", str(f), "--rate", "7"]) == 0
    assert "requests/s" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(_TOML.replace("dim = 128", "dim = -1"))
    assert main(["pipeline", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffperf: error:") and "dim = -1" in err
