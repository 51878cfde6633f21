"""Aggregated serving (continuous batching + chunked prefill): goldens, Little's law,
gradients vs finite differences, saturation/memory edges, transforms, monotonicity.

Compile time dominates, so every test reuses a handful of jitted, vmapped functions (one per
static structure: tau, load mode) called on 4 stacked designs.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.deploy import Aggregated, Workload
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.stages import iteration, make_plan, mixed_batch


HW = load_hardware("h100-sxm")
MODEL = load_model("llama-3.1-8b")
PLAN = make_plan(MODEL, tp=1)
N_STACK = 4
FIELDS = ("bw", "conc", "rate", "max_batch", "isl", "osl", "ro", "lag", "h0", "h1", "cqr")


def _point(**kw):
    d = dict(
        bw=float(HW.accel.hbm.bw_bytes_per_s),
        conc=16.0,
        rate=1.0,
        max_batch=64.0,
        isl=1024.0,
        osl=128.0,
        ro=0.03,
        lag=1.0,
        h0=0.5e-3,
        h1=37e-6,
        cqr=0.0,
    )
    d.update(kw)
    return jnp.array([d[k] for k in FIELDS], dtype=float)


def _metrics(p, mode, tau):
    hw = eqx.tree_at(lambda h: h.accel.hbm.bw_bytes_per_s, HW, p[0])
    scheme = Aggregated(
        plan=PLAN,
        instances=1.0,
        max_batch=p[3],
        request_overhead_s=p[6],
        output_lag_iterations=p[7],
        host_overhead_s=p[8],
        host_overhead_s_per_seq=p[9],
        client_queue_requests=p[10],
    )
    w = Workload(
        isl_tokens=p[4],
        osl_tokens=p[5],
        concurrency=p[1],
        arrival_rate_per_s=p[2],
        load_mode=mode,
    )
    return scheme.metrics(hw, MODEL, w, tau)


def _stack(points):
    pts = list(points)
    assert len(pts) <= N_STACK
    pts = pts + [pts[-1]] * (N_STACK - len(pts))
    return jnp.stack(pts)


@eqx.filter_jit
def _closed0(ps):
    return jax.vmap(lambda p: _metrics(p, "closed", 0.0))(ps)


@eqx.filter_jit
def _open0(ps):
    return jax.vmap(lambda p: _metrics(p, "open", 0.0))(ps)


def _tt(p, mode):
    m = _metrics(p, mode, 0.05)
    return jnp.stack([m.tpot_s, m.ttft_s, m.throughput_tok_s, m.penalty, m.utilisation])


def _jvp(mode):
    """Smooth (tau = 0.05) [TPOT, TTFT, throughput, penalty, utilisation] and their
    derivatives along one tangent per stacked design (forward mode: one cheap compile)."""

    @jax.jit
    def f(ps, ts):
        return jax.vmap(lambda p, t: jax.jvp(lambda q: _tt(q, mode), (p,), (t,)))(ps, ts)

    return f


_closed_jvp, _open_jvp = _jvp("closed"), _jvp("open")


def _closed_smooth(ps):
    return _closed_jvp(ps, jnp.zeros_like(ps))[0]


@jax.jit
def _iter_jit(rows):
    one = lambda r: iteration(HW, MODEL, PLAN, mixed_batch(r[0], r[1], r[2], r[3])).latency_s
    return jax.vmap(one)(rows)


def _iter(*rows):
    """Step latencies of mixed batches ``(decode, context, prefill, chunk)`` (padded to 3
    rows: one compiled step model for every golden)."""
    padded = list(rows) + [rows[-1]] * (3 - len(rows))
    return np.asarray(_iter_jit(jnp.array(padded, dtype=float)))[: len(rows)]


def _at(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def test_golden_one_client_tiny_prompt_is_a_pure_decode_step():
    # One client, ISL = 1, OSL = 10^4, no host/frontend terms: the engine runs one sequence;
    # prefill tokens per iteration P = X·ISL·T = T/R ≈ 1/OSL, so a fraction ≈ 1e-4 of
    # iterations is "mixed" (and that one carries a single extra token). Hence
    # TPOT = decode step at batch D = X (OSL-1) T ≈ 1 and mean context ISL + OSL/2 = 5001,
    # to ~1e-4 (the stated tolerance 1e-3 leaves margin).
    p = _point(conc=1.0, isl=1.0, osl=1e4, ro=0.0, lag=0.0, h0=0.0, h1=0.0)
    m = _at(_closed0(_stack([p])), 0)
    ref = _iter((1.0, 1.0 + 0.5e4, 0.0, 1.0))[0]
    np.testing.assert_allclose(m.tpot_s, ref, rtol=1e-3)
    np.testing.assert_allclose(m.decode_batch, 1.0, rtol=1e-3)


def test_golden_open_loop_low_load_ttft_is_prefill_plus_residual():
    # λ = 0 and OSL = 1: no decoding sequences (D = λ (OSL-1) T = 0), no queue (ρ = 0); the
    # iteration carrying the prompt carries it alone (P_h = ISL + P = ISL) and all other
    # iterations are decode-only, so the residual of the iteration in flight is
    # E[T²]/(2E[T]) = T_dec/2 and TTFT = frontend + lag·T_dec + T_dec/2 + T_mix.
    # The open-loop surrogate (module docstring) has decode nodes at 1, M/4 = 16 and M = 64
    # sequences, extrapolated linearly below one sequence, and the prompt's increment
    # measured on one decoding sequence: T_dec = t(1) - (t(16) - t(1))/15,
    # T_mix = T_dec + t(1 seq + 2048-token prompt) - t(1); context ISL + OSL/2 = 2048.5.
    p = _point(rate=0.0, isl=2048.0, osl=1.0, ro=0.03, lag=1.0, h0=0.0, h1=0.0)
    m = _at(_open0(_stack([p])), 0)
    t = _iter((1.0, 2048.5, 0.0, 1.0), (16.0, 2048.5, 0.0, 1.0), (1.0, 2048.5, 2048.0, 2048.0))
    t_dec = t[0] - (t[1] - t[0]) / 15.0
    t_mix = t_dec + t[2] - t[0]
    np.testing.assert_allclose(m.ttft_s, 0.03 + 1.5 * t_dec + t_mix, rtol=1e-9)
    assert float(m.utilisation) < 1e-4


@pytest.mark.parametrize("cqr", [0.0, 1.0])
def test_littles_law_identity(cqr):
    # closed loop: X · R = N per instance, with R = TTFT + (OSL-1) TPOT the request latency;
    # also when clients exceed the engine's max batch (they queue for a slot)
    pts = [
        _point(conc=16.0, max_batch=64.0, cqr=cqr),
        _point(conc=96.0, max_batch=32.0, cqr=cqr),
        _point(conc=3.0, isl=4096.0, osl=16.0, cqr=cqr),
    ]
    m = _closed0(_stack(pts))
    x = m.throughput_tok_s / np.array([p[5] for p in _stack(pts)])
    n = np.array([p[1] for p in _stack(pts)])
    np.testing.assert_allclose(x * m.request_latency_s, n, rtol=1e-9)
    # the slot-limited design runs max_batch sequences at most
    assert float(m.decode_batch[1]) <= 32.0 + 1e-9


def test_mixed_prefill_slows_decode():
    # the steady state mixes prefill chunks into decode iterations: TPOT at 64 clients,
    # ISL 2048 / OSL 128 is far above the pure decode step at the same batch
    p = _point(conc=64.0, max_batch=64.0, isl=2048.0, osl=128.0)
    m = _at(_closed0(_stack([p])), 0)
    pure = _iter((64.0, 2048.0 + 64.0, 0.0, 1.0))[0]
    assert float(m.tpot_s) > 2.0 * float(pure)
    assert 25e-3 < float(m.tpot_s) < 45e-3  # measured 33.6 ms (TensorRT-LLM, H100)


def test_gradients_match_finite_differences():
    # The step model quantises tiles/waves with straight-through rounding, but the scheme
    # solves on a secant surrogate through its anchors, so AD (implicit-function derivative
    # of the fixed point) and a central difference over ±1% agree to a few 1e-3; rtol 2%.
    # Smooth interior point (tau = 0.05): 48 clients against max_batch 40 so the batch limit
    # binds smoothly; ISL < chunk budget so no chunk-count kink.
    p = _point(conc=48.0, max_batch=40.0, isl=1500.0, osl=200.0)
    ks = (0, 1, 3)  # HBM bandwidth, concurrency, max_batch
    rel = 1e-2
    h = [rel * float(p[k]) for k in ks]
    eye = jnp.eye(len(FIELDS))
    # AD: the three directions at p; FD: p ± h e_k, all in one stacked call
    ad = np.asarray(_closed_jvp(jnp.stack([p] * 3), jnp.stack([eye[k] for k in ks]))[1])
    plus = jnp.stack([p + hk * eye[k] for hk, k in zip(h, ks)] + [p])
    minus = jnp.stack([p - hk * eye[k] for hk, k in zip(h, ks)] + [p])
    fp, fm = (np.asarray(_closed_smooth(q)) for q in (plus, minus))
    for i, (hk, k) in enumerate(zip(h, ks)):
        fd = (fp[i] - fm[i]) / (2 * hk)
        np.testing.assert_allclose(ad[i, :3], fd[:3], rtol=2e-2, err_msg=FIELDS[k])


def test_gradients_finite_when_memory_does_not_fit_and_when_saturated():
    # directional derivatives along t = p + 1 (every parameter moves, so a NaN or inf in any
    # partial derivative shows); closed: 4000 clients of 32k-token prompts on one H100 (KV
    # far beyond capacity); open: 1000 requests/s of 4k prompts, far beyond prefill capacity
    pc = _point(conc=4000.0, max_batch=4000.0, isl=32768.0, osl=1024.0)
    vc, dc = _closed_jvp(_stack([pc]), _stack([pc + 1.0]))
    mc = _at(_closed0(_stack([pc])), 0)
    assert float(mc.memory_margin_frac) < 0 and float(mc.memory_ok) == 0.0
    assert np.all(np.isfinite(np.asarray(vc))) and np.all(np.isfinite(np.asarray(dc)))
    po = _point(rate=1000.0, isl=4096.0, osl=256.0, max_batch=256.0)
    vo, do = _open_jvp(_stack([po]), _stack([po + 1.0]))
    assert float(vo[0, 4]) >= 1.0  # utilisation
    assert np.all(np.isfinite(np.asarray(vo))) and np.all(np.isfinite(np.asarray(do)))


def test_jit_equals_vmap():
    pts = [_point(conc=c) for c in (2.0, 8.0, 32.0, 128.0)]
    mv = np.asarray(_closed_smooth(_stack(pts)))
    for i, p in enumerate(pts):
        mi = np.asarray(_closed_smooth(_stack([p])))[0]
        np.testing.assert_allclose(mi, mv[i], rtol=1e-12)


def test_monotonic_in_concurrency_and_bandwidth():
    conc = [1.0, 4.0, 16.0, 64.0]
    m = np.asarray(_closed_smooth(_stack([_point(conc=c, max_batch=256.0) for c in conc])))
    assert np.all(np.diff(m[:, 0]) > 0)  # TPOT
    assert np.all(np.diff(m[:, 2]) > 0)  # throughput
    bw = float(HW.accel.hbm.bw_bytes_per_s)
    mb = np.asarray(
        _closed_smooth(_stack([_point(conc=16.0, bw=bw * f) for f in (0.5, 1.0, 2.0, 4.0)]))
    )
    assert np.all(np.diff(mb[:, 0]) <= 0)
    assert np.all(np.diff(mb[:, 1]) <= 1e-12)


def test_saturated_open_loop_keeps_finite_times():
    # 1000 requests/s of 4k prompts on one H100: ρ ≫ 1 is infeasible, times stay finite
    mo = _at(_open0(_stack([_point(rate=1000.0, isl=4096.0, osl=256.0)])), 0)
    assert float(mo.utilisation) >= 1.0 and float(mo.rate_ok) == 0.0
    for leaf in (mo.ttft_s, mo.ttft_pct_s, mo.tpot_s, mo.tpot_pct_s, mo.throughput_tok_s):
        assert np.isfinite(float(leaf)) and float(leaf) > 0
