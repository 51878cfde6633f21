"""GEMM cost model: golden values, gradients, edges, transforms, physics, validation."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from diffperf.calibrate._fit import _with_params
from diffperf.hardware import load_hardware
from diffperf.ops._gemm import gemm_compute_eff, gemm_cost, gemm_costs

from .helpers import assert_median_error_bars, shared_data_dir


DATA = (shared_data_dir() or Path("/nonexistent")) / "kernels"


@pytest.fixture(scope="module")
def hw():
    return load_hardware("h100-sxm")


def test_golden_compute_bound(hw):
    # m=n=k=32768 is a multiple of every tile (128) and split-k is off (tiles >> slots):
    # tiles = 256*256 = 65536 = 496.48 waves of 132 -> 497 waves, wave_eff = 65536/(497*132);
    # eta_k = k/(k+k_half). t = 2mnk/(peak*eff_bf16*wave*eta_k) + launch (compute leg >> memory).
    e = hw.accel.eff.gemm
    m = 32768.0
    wave = 65536.0 / (497.0 * 132.0)
    eta_k = m / (m + float(e.k_half_elems))
    want = 2 * m**3 / (989.4e12 * float(e.compute_eff_bf16) * wave * eta_k) + float(e.launch_s)
    got = gemm_cost(hw, m, m, m, "bf16").time_s
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_golden_memory_bound(hw):
    # m=1, n=k=8192 bf16: bytes = k*2 + k*n*2 + n*2; eta_m = mem_eff*b/(b+B_half);
    # t = b/(bw*eta_m) + launch = (b + B_half)/(bw*mem_eff) + launch (memory leg dominates).
    e = hw.accel.eff.gemm
    b = 8192 * 2 + 8192 * 8192 * 2 + 8192 * 2
    want = (b + float(e.mem_half_bytes)) / (3350e9 * float(e.mem_eff)) + float(e.launch_s)
    c = gemm_cost(hw, 1.0, 8192.0, 8192.0, "bf16")
    assert float(c.memory_s) > float(c.compute_s)
    np.testing.assert_allclose(c.time_s, want, rtol=1e-9)


def test_weight_only_reads_fewer_bytes(hw):
    c16 = gemm_cost(hw, 1.0, 8192.0, 8192.0, "bf16")
    c4 = gemm_cost(hw, 1.0, 8192.0, 8192.0, "w4a16_mxfp4")
    assert float(c4.bytes) < 0.3 * float(c16.bytes)
    assert float(c4.time_s) < float(c16.time_s)
    # same bf16 peak: compute leg differs only by dequant_eff
    big = [4096.0, 4096.0, 4096.0]
    r = gemm_compute_eff(hw, *big, "w4a16_mxfp4") / gemm_compute_eff(hw, *big, "bf16")
    np.testing.assert_allclose(r, hw.accel.eff.gemm.dequant_eff, rtol=1e-12)


def test_unsupported_precision_falls_back(hw):
    # H100 has no fp4 tensor cores: nvfp4 runs on the fp8 peak.
    assert hw.accel.compute_precision("nvfp4") == "fp8"
    assert bool(jnp.isfinite(gemm_cost(hw, 4096.0, 4096.0, 4096.0, "nvfp4").time_s))


def _logt(hw, dtype, tau=0.05):
    return lambda lm, ln, lk: jnp.log(
        gemm_cost(hw, jnp.exp(lm), jnp.exp(ln), jnp.exp(lk), dtype, tau=tau).time_s
    )


@pytest.mark.parametrize("dtype", ["bf16", "fp8", "fp8_block", "w4a16_mxfp4"])
def test_grads_vs_fd(hw, dtype):
    # interior point on log inputs (O(1)); ceilings are straight-through so check the smooth
    # part only through jax's own FD on a point away from tile boundaries, with loose tolerance
    f = _logt(hw, dtype)
    x = (jnp.log(3000.5), jnp.log(5000.3), jnp.log(7000.7))
    g = jax.grad(lambda lm: f(lm, x[1], x[2]))(x[0])
    assert bool(jnp.isfinite(g))
    # memory-bound regime has no ceilings on the active leg: exact check
    f0 = _logt(hw, dtype, tau=0.0)
    c = gemm_cost(hw, 1.0, 5000.3, 7000.7, dtype)
    if float(c.compute_s) >= float(c.memory_s):  # 4-bit weights: padded-tile compute leg wins
        return
    check_grads(lambda lk, ln: f0(jnp.log(1.0), ln, lk), (x[2], x[1]), order=1, modes=["rev"])


@pytest.mark.parametrize("m,n,k", [(1.0, 8192.0, 8192.0), (128.0, 128.0, 1.0), (0.0, 64.0, 64.0)])
def test_finite_grads_edges(hw, m, n, k):
    for tau in (0.0, 0.05):
        g = jax.grad(
            lambda a, b, c: gemm_cost(hw, a, b, c, "fp8", tau=tau).time_s, argnums=(0, 1, 2)
        )(m, n, k)
        assert all(bool(jnp.isfinite(x)) for x in g)
    # grads w.r.t. hardware leaves too
    gh = eqx.filter_grad(lambda h: gemm_cost(h, m, n, k, "bf16").time_s)(hw)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(gh))


def test_tie_finite(hw):
    # force an exact tie of the two legs by picking bw so memory_s == compute_s
    c = gemm_cost(hw, 512.0, 4096.0, 4096.0, "bf16")
    scale = float(c.memory_s) / float(c.compute_s)
    hw2 = eqx.tree_at(lambda h: h.accel.hbm.bw_bytes_per_s, hw, hw.accel.hbm.bw_bytes_per_s * scale)
    g = jax.grad(
        lambda bw: (
            gemm_cost(
                eqx.tree_at(lambda h: h.accel.hbm.bw_bytes_per_s, hw2, bw),
                512.0,
                4096.0,
                4096.0,
                "bf16",
            ).time_s
        )
    )(hw2.accel.hbm.bw_bytes_per_s)
    assert bool(jnp.isfinite(g))


def test_jit_eager_vmap(hw):
    ms = jnp.array([1.0, 17.0, 129.0, 1025.0, 8192.0])
    eager = [gemm_cost(hw, m, 4096.0, 7168.0, "fp8_block").time_s for m in ms]
    jitted = jax.jit(lambda m: gemm_cost(hw, m, 4096.0, 7168.0, "fp8_block").time_s)
    vm = jax.vmap(lambda m: gemm_cost(hw, m, 4096.0, 7168.0, "fp8_block").time_s)(ms)
    for i, m in enumerate(ms):
        np.testing.assert_allclose(jitted(m), eager[i], rtol=1e-12)
        np.testing.assert_allclose(vm[i], eager[i], rtol=1e-12)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_monotone_in_hardware(hw, dtype):
    ms = jnp.array([1.0, 64.0, 512.0, 4096.0, 32768.0])
    f = lambda h: jax.vmap(lambda m: gemm_cost(h, m, 8192.0, 8192.0, dtype).time_s)(ms)
    base = f(hw)
    more_bw = eqx.tree_at(
        lambda h: h.accel.hbm.bw_bytes_per_s, hw, hw.accel.hbm.bw_bytes_per_s * 1.5
    )
    more_pk = eqx.tree_at(
        lambda h: (h.accel.peak_bf16_flop_per_s, h.accel.peak_fp8_flop_per_s),
        hw,
        (hw.accel.peak_bf16_flop_per_s * 1.5, hw.accel.peak_fp8_flop_per_s * 1.5),
    )
    assert bool(jnp.all(f(more_bw) <= base))
    assert bool(jnp.all(f(more_pk) <= base))
    # more work (m) never takes less time at fixed tiles: compare tile-aligned m
    assert bool(jnp.all(jnp.diff(base) >= 0))


@pytest.mark.validation
def test_validation_gemm():
    if not (DATA / "gemm.csv").exists():
        pytest.skip("measured data folder absent")
    assert_median_error_bars(DATA / "gemm.csv", 0.15)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_batched_gemms_equal_the_sum_of_single_ones(hw, dtype):
    """``gemm_costs`` (one broadcast call) gives every leg of the weighted sum of separate
    ``gemm_cost`` calls, for scalar and vector (vmapped-sweep) shapes, and the same gradient
    with respect to the hardware."""
    gates = [1.0, 0.5, 0.0]

    def shapes(m):
        return [(m, 7168.0, 1536.0), (3.0 * m, 24576.0, 1536.0), (2.0 * m + 5.0, 576.0, 7168.0)]

    def separate(h, m):
        costs = [
            gemm_cost(h, a, b, c, dtype, 0.05).scale(g) for (a, b, c), g in zip(shapes(m), gates)
        ]
        return costs[0] + costs[1] + costs[2]

    def batched(h, m):
        return gemm_costs(h, shapes(m), dtype, 0.05, weights=gates)

    for m in (jnp.asarray(37.0), jnp.array([1.0, 37.0, 4096.0])):
        a, b = separate(hw, m), batched(hw, m)
        for leg in ("time_s", "compute_s", "memory_s", "flop", "bytes"):
            np.testing.assert_allclose(getattr(b, leg), getattr(a, leg), rtol=1e-12)
            assert getattr(b, leg).shape == m.shape
    ga = jax.grad(lambda h: separate(h, 37.0).time_s)(hw)
    gb = jax.grad(lambda h: batched(h, 37.0).time_s)(hw)
    for x, y in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
        np.testing.assert_allclose(y, x, rtol=1e-10, atol=1e-30)


def test_format_fixed_costs_are_added_once(hw):
    """The fixed costs of block-scaled kernels, fp4 kernels and the separate activation
    quantisation of per-tensor formats add exactly once per GEMM, only to their formats
    (the hand-fitted hopper profile has them at 0; calibrated presets fit them)."""
    e = hw.accel.eff.gemm
    assert float(e.scaled_launch_s) == float(e.quant_launch_s) == float(e.fp4_launch_s) == 0.0
    on = eqx.tree_at(
        lambda h: (
            h.accel.eff.gemm.scaled_launch_s,
            h.accel.eff.gemm.quant_launch_s,
            h.accel.eff.gemm.fp4_launch_s,
        ),
        hw,
        (jnp.asarray(1e-6), jnp.asarray(2e-6), jnp.asarray(4e-6)),
    )
    extra = {
        "bf16": 0.0,
        "w4a16_mxfp4": 0.0,  # weight-only: bf16 kernel, no scaled MMA
        "fp8": 2e-6,
        "int8": 2e-6,
        "fp8_block": 1e-6,
        "nvfp4": 4e-6,
        "mxfp4": 4e-6,
    }
    for dtype, add in extra.items():
        for m in (1.0, 300.0, 8192.0):
            d = (
                gemm_cost(on, m, 4096.0, 7168.0, dtype).time_s
                - gemm_cost(hw, m, 4096.0, 7168.0, dtype).time_s
            )
            assert float(d) == pytest.approx(add, abs=1e-15), (dtype, m)


def test_unaligned_rows_slow_only_block_scaled_fp8(hw):
    """``unaligned_m_eff`` divides fp8_block's compute efficiency when m is above half a
    128-row tile and not a multiple of it; aligned m, m <= 64, a relaxed m within half a row
    of alignment and every other format keep their efficiency (hand profiles: factor 1)."""
    assert float(hw.accel.eff.gemm.unaligned_m_eff) == 1.0
    slow = eqx.tree_at(lambda h: h.accel.eff.gemm.unaligned_m_eff, hw, jnp.asarray(0.5))
    ratio = {
        (129.0, "fp8_block"): 0.5,  # 127 padding rows in the last tile: slow path
        (65.0, "fp8_block"): 0.5,
        (4097.0, "fp8_block"): 0.5,
        (128.0, "fp8_block"): 1.0,  # aligned
        (4096.0, "fp8_block"): 1.0,
        (64.0, "fp8_block"): 1.0,  # half a tile or less: the small-m kernel, no padding path
        (33.0, "fp8_block"): 1.0,
        (255.6, "fp8_block"): 1.0,  # 0.4 padding rows: counts as 256
        (129.0, "fp8"): 1.0,
        (129.0, "bf16"): 1.0,
    }
    for (m, dtype), r in ratio.items():
        a = gemm_compute_eff(slow, m, 4096.0, 7168.0, dtype)
        b = gemm_compute_eff(hw, m, 4096.0, 7168.0, dtype)
        assert float(a / b) == pytest.approx(r, rel=1e-12), (m, dtype)
    # compute-bound m = 8193 (65 x 32 tiles): compute time doubles at factor 0.5
    t = [gemm_cost(h, 8193.0, 4096.0, 7168.0, "fp8_block").compute_s for h in (slow, hw)]
    assert float(t[0] / t[1]) == pytest.approx(2.0, rel=1e-12)
    # the factor's gradient is finite and negative (a slower path costs time)
    g = jax.grad(
        lambda f: (
            gemm_cost(
                eqx.tree_at(lambda h: h.accel.eff.gemm.unaligned_m_eff, hw, f),
                8193.0,
                4096.0,
                7168.0,
                "fp8_block",
            ).time_s
        )
    )(jnp.asarray(0.8))
    assert np.isfinite(g) and float(g) < 0


def _with_tail_share(hw, c):
    return eqx.tree_at(lambda h: h.accel.eff.gemm.wave_tail_share, hw, jnp.asarray(c))


def test_partial_wave_share(hw):
    """``wave_tail_share`` c sets what a partial last wave costs: ``W = max(1, w + c(⌈w⌉-w))``
    waves for ``w = units/slots``. H100 profile: 132 slots, 128x128 tiles.

    m=640, n=4096, k=7168: 5 x 32 = 160 tiles >= 132 slots, so no split-k; w = 160/132.
    wave_eff = 160 / (132 W) = 160 / (160 + c (264 - 160)): c=1 -> 160/264 (two whole
    waves, the hand profiles' model), c=0 -> 1 (stream-k), c=0.25 -> 160/186.
    m=128: 32 tiles split 4 ways = 128 units < 132 slots: one wave whatever c.
    m=4224: 33 x 32 = 1056 tiles = 8 whole waves: no partial wave, c does not matter.
    """
    assert float(hw.accel.eff.gemm.wave_tail_share) == 1.0
    n, k = 4096.0, 7168.0
    base = gemm_compute_eff(hw, 640.0, n, k, "bf16")
    for c, wave_eff in [(1.0, 160 / 264), (0.25, 160 / 186), (0.0, 1.0)]:
        got = gemm_compute_eff(_with_tail_share(hw, c), 640.0, n, k, "bf16")
        assert float(got / base) == pytest.approx(wave_eff / (160 / 264), rel=1e-12), c
    for m in (128.0, 4224.0):
        for c in (0.0, 0.5):
            got = gemm_compute_eff(_with_tail_share(hw, c), m, n, k, "bf16")
            assert float(got) == pytest.approx(float(gemm_compute_eff(hw, m, n, k, "bf16")))

    # block-scaled kernels schedule whole tiles: fp8_block (H100) and nvfp4 (B200, native
    # fp4) keep two whole waves whatever the share (B200: 148 slots, 5 x 32 = 160 tiles)
    b200 = load_hardware("b200-sxm")
    for h, dtype in [(hw, "fp8_block"), (b200, "nvfp4")]:
        got = gemm_compute_eff(_with_tail_share(h, 0.0), 640.0, n, k, dtype)
        assert float(got) == float(gemm_compute_eff(h, 640.0, n, k, dtype)), dtype

    # the share's gradient: time grows with it where a wave is partial (finite differences),
    # and is exactly 0 where the waves are whole
    def time_s(c, m):
        return gemm_cost(_with_tail_share(hw, c), m, n, k, "bf16").time_s

    check_grads(lambda c: time_s(c, 640.0), (jnp.asarray(0.4),), order=1, modes=["rev"])
    assert float(jax.grad(time_s)(jnp.asarray(0.4), 640.0)) > 0
    assert float(jax.grad(time_s)(jnp.asarray(0.4), 4224.0)) == 0.0


def _with_gemm(hw, **fields):
    """``hw`` with GEMM efficiency fields replaced (values may be traced)."""
    names = tuple(("gemm", name) for name in fields)
    return _with_params(hw, names, jnp.stack([jnp.asarray(v, float) for v in fields.values()]))


def test_group_quantisation_pass(hw):
    """``group_quant_passes`` p adds, to group-scaled formats only, p memory passes that read
    the bf16 activations and write the quantised copy: ``p · m k (2 + a) / (bw · η_m)`` with
    ``a`` the format's activation bytes (fp8_block 1 + 4/128, nvfp4 0.5625, mxfp4 0.53125)
    and ``η_m = mem_eff · q/(q + B½)`` at those ``q`` bytes. Per-tensor formats keep their
    own ``act_quant_passes``; bf16 and weight-only formats quantise nothing. The hand
    profiles have p = 0 (fused), the calibrated presets fit ~1 (H100 1.2, B200 1.1)."""
    e = hw.accel.eff.gemm
    assert float(e.group_quant_passes) == 0.0
    on = _with_gemm(hw, group_quant_passes=1.5)
    bw = 3.35e12  # H100-SXM HBM3
    m, n, k = 300.0, 4096.0, 7168.0
    for dtype, a in [("fp8_block", 1 + 4 / 128), ("nvfp4", 0.5625), ("mxfp4", 0.53125)]:
        q = m * k * (2.0 + a)
        eta = float(e.mem_eff) * q / (q + float(e.mem_half_bytes))
        want = 1.5 * q / (bw * eta)
        d = gemm_cost(on, m, n, k, dtype).time_s - gemm_cost(hw, m, n, k, dtype).time_s
        assert float(d) == pytest.approx(want, rel=1e-9), dtype
    for dtype in ("bf16", "fp8", "int8", "w4a16_mxfp4"):
        d = gemm_cost(on, m, n, k, dtype).time_s - gemm_cost(hw, m, n, k, dtype).time_s
        assert float(d) == 0.0, dtype
    # the gradient with respect to p is the one pass's time
    g = jax.grad(
        lambda p: gemm_cost(_with_gemm(hw, group_quant_passes=p), m, n, k, "fp8_block").time_s
    )(jnp.asarray(1.0))
    q = m * k * (3.0 + 4 / 128)
    want = q / (bw * float(e.mem_eff) * q / (q + float(e.mem_half_bytes)))
    assert float(g) == pytest.approx(want, rel=1e-6)


def test_unaligned_padding_time(hw):
    """``unaligned_row_k_s`` c charges fp8_block's unaligned-row path ``W · pad · k · c``:
    ``pad = ⌈m/128⌉·128 − m`` padding rows, ``W = ⌈tiles/132⌉`` whole waves of 128x128 tiles.

    m=129, n=1536, k=7168: 2 x 12 = 24 tiles, one wave, 127 padding rows ->
    127 · 7168 · 2e-11 s = 18.207 us (H100 measured: 38.9 us at m=129, 18.3 us at m=256).
    m=129, n=51200, k=5120: 2 x 400 = 800 tiles = 6.06 waves -> 7; 7 · 127 · 5120 · 2e-11.
    m=200: 56 padding rows. Aligned m, m <= 64 (the small-m kernel), a relaxed m within half
    a row of alignment and other formats pay nothing.
    """
    c = 2e-11
    on = _with_gemm(hw, unaligned_row_k_s=c)

    def extra(m, n, k, dtype="fp8_block"):
        return float(gemm_cost(on, m, n, k, dtype).time_s - gemm_cost(hw, m, n, k, dtype).time_s)

    assert extra(129.0, 1536.0, 7168.0) == pytest.approx(127 * 7168 * c, rel=1e-9)
    assert extra(129.0, 51200.0, 5120.0) == pytest.approx(7 * 127 * 5120 * c, rel=1e-9)
    assert extra(200.0, 1536.0, 7168.0) == pytest.approx(56 * 7168 * c, rel=1e-9)
    for m in (128.0, 256.0, 64.0, 33.0, 255.6):
        assert extra(m, 1536.0, 7168.0) == 0.0, m
    for dtype in ("fp8", "bf16", "nvfp4"):
        assert extra(129.0, 1536.0, 7168.0, dtype) == 0.0, dtype

    # gradients: d/dc = W · pad · k exactly. In m the ceilings are straight-through: the
    # padding ⌈m/128⌉·128 - m has slope 0 (its mean over a tile does not move with m) and the
    # waves ⌈tiles/132⌉ slope 12/(128·132) (12 columns of tiles), so at m = 160 (96 padding
    # rows) d(extra)/dm = 96 · 7168 · c · 12/(128 · 132)
    g = jax.grad(
        lambda v: (
            gemm_cost(
                _with_gemm(hw, unaligned_row_k_s=v), 129.0, 1536.0, 7168.0, "fp8_block"
            ).time_s
        )
    )(jnp.asarray(c))
    assert float(g) == pytest.approx(127 * 7168, rel=1e-9)

    def dt_dm(h, m):
        return jax.grad(lambda x: gemm_cost(h, x, 1536.0, 7168.0, "fp8_block").time_s)(m)

    d = dt_dm(on, jnp.asarray(160.0)) - dt_dm(hw, jnp.asarray(160.0))
    assert float(d) == pytest.approx(96 * 7168 * c * 12 / (128 * 132), rel=1e-9)


def test_block_kernel_k_pace_floor():
    """Block-scaled kernels walk the whole k per column of output tiles (no split-k): their
    compute leg is at least ``⌈⌈n/128⌉/S⌉ · k · pace`` (``fp4_tile_k_s`` for fp4 formats,
    ``block_tile_k_s`` for fp8_block). B200: 148 slots.

    nvfp4 m=1, n=k=2048: 16 columns, one wave -> 2048 · 4e-9 = 8.19 us, above the padded-
    tile compute time (2·128·2048·2048 / (9e15 · 0.296 · (16/148) · η_k) = 4.15 us), so
    the floor is the leg. n=51200: 400 columns = 2.7 waves -> 3 · 2048 · 4e-9.
    m=16384, n=k=8192 (compute-bound full tiles): the floor (8192 · 4e-9 = 33 us) is far
    below the compute leg (~0.6 ms) and changes nothing. bf16 and fp8 have no floor.
    """
    b200 = load_hardware("b200-sxm")
    e = b200.accel.eff.gemm
    assert float(e.fp4_tile_k_s) == float(e.block_tile_k_s) == 0
    pace = 4e-9
    cases = [("fp4_tile_k_s", "nvfp4", b200), ("block_tile_k_s", "fp8_block", b200)]
    for field, dtype, hw_ in cases:
        on = _with_gemm(hw_, **{field: pace})
        base = gemm_cost(hw_, 1.0, 2048.0, 2048.0, dtype).compute_s
        assert float(base) < 2048 * pace
        got = gemm_cost(on, 1.0, 2048.0, 2048.0, dtype).compute_s
        assert float(got) == pytest.approx(2048 * pace, rel=1e-12), dtype
        got = gemm_cost(on, 1.0, 51200.0, 2048.0, dtype).compute_s
        assert float(got) == pytest.approx(
            max(3 * 2048 * pace, float(gemm_cost(hw_, 1.0, 51200.0, 2048.0, dtype).compute_s)),
            rel=1e-12,
        ), dtype
        big = [gemm_cost(h, 16384.0, 8192.0, 8192.0, dtype).time_s for h in (on, hw_)]
        assert float(big[0]) == float(big[1]), dtype
        # the other pace field does not act on this format
        other = "block_tile_k_s" if field == "fp4_tile_k_s" else "fp4_tile_k_s"
        off = _with_gemm(hw_, **{other: pace})
        assert float(gemm_cost(off, 1.0, 2048.0, 2048.0, dtype).compute_s) == float(base)
        # where the floor binds, d(time)/d(pace) = waves · k
        g = jax.grad(
            lambda p: gemm_cost(_with_gemm(hw_, **{field: p}), 1.0, 2048.0, 2048.0, dtype).time_s
        )(jnp.asarray(pace))
        assert float(g) == pytest.approx(2048.0, rel=1e-9), dtype
    on = _with_gemm(b200, fp4_tile_k_s=pace, block_tile_k_s=pace)
    for dtype in ("bf16", "fp8"):
        a, b = (gemm_cost(h, 1.0, 2048.0, 2048.0, dtype).time_s for h in (on, b200))
        assert float(a) == float(b), dtype


def test_block_scaled_partial_wave_share(hw):
    """``scaled_wave_tail_share`` is the partial-wave share of the block-scaled kernels
    (fp8_block, fp4), as ``wave_tail_share`` is of the others (see test_partial_wave_share):
    m=640, n=4096, k=7168 on B200 is 160 tiles over 148 slots; share 1 (hand profiles) ->
    wave_eff 160/296, share 0 -> 1, share 0.5 -> 160/(160 + 0.5·136). bf16 ignores it."""
    b200 = load_hardware("b200-sxm")
    n, k = 4096.0, 7168.0
    for h, dtype, slots in [(b200, "nvfp4", 148), (b200, "fp8_block", 148), (hw, "fp8_block", 132)]:
        assert float(h.accel.eff.gemm.scaled_wave_tail_share) == 1.0
        base = gemm_compute_eff(h, 640.0, n, k, dtype)
        whole = 160 / (2 * slots)
        for c in (0.0, 0.5):
            got = gemm_compute_eff(_with_gemm(h, scaled_wave_tail_share=c), 640.0, n, k, dtype)
            want = 160 / (160 + c * (2 * slots - 160))
            assert float(got / base) == pytest.approx(want / whole, rel=1e-12), (dtype, c)
    got = gemm_compute_eff(_with_gemm(b200, scaled_wave_tail_share=0.0), 640.0, n, k, "bf16")
    assert float(got) == float(gemm_compute_eff(b200, 640.0, n, k, "bf16"))
