"""MoE layer cost model: experts-touched limits, golden values, gradients, physics, validation."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.calibrate._predict_moe import sample_busiest_rank_load
from diffperf.hardware import load_hardware
from diffperf.ops._moe import busiest_rank_load, expected_experts_touched, moe_layer_cost

from .helpers import assert_median_error_bars, shared_data_dir


DATA = (shared_data_dir() or Path("/nonexistent")) / "kernels"
DS = (7168.0, 2048.0, 256.0, 8.0)  # deepseek-v3: hidden, intermediate, experts, top-k


@pytest.fixture(scope="module")
def hw():
    return load_hardware("h100-sxm")


def test_experts_touched_limits():
    np.testing.assert_allclose(expected_experts_touched(1.0, 8.0, 256.0), 8.0, rtol=1e-12)
    np.testing.assert_allclose(expected_experts_touched(1e6, 8.0, 256.0), 256.0, rtol=1e-9)
    # T=2: E(1-(1-k/E)^2) = 256*(1-(31/32)^2) = 256*63/1024 = 15.75
    np.testing.assert_allclose(expected_experts_touched(2.0, 8.0, 256.0), 15.75, rtol=1e-12)
    # k == E: every expert always touched, finite gradient
    g = jax.grad(expected_experts_touched)(3.0, 8.0, 8.0)
    assert bool(jnp.isfinite(g))


def test_golden_weight_bound(hw):
    # T=32 balanced, deepseek fp8_block, tp=ep=1: 32*8 = 256 = E, so every expert is touched
    # (f = min(1, Tk/E) = 1); one rank holds exactly its load (λ = 1 at ep = 1, skew = 0), so
    # A = 256 local assignments, one row per expert: the weight stream beats the tensor cores
    # and (module docstring), with b_e = 3*H*I*w the weight bytes of one expert,
    # t = 256*b_e / (bw*mem_eff*b_e/(b_e + weight_half_bytes))
    #     + [A*(H*(2+a+4) + I*(2*2+2+a)) + block_act_passes*A*H*2 + passes*T*H*2]
    #       / (bw*act_mem_eff)
    #     + routing_s + assign_s*T*k + block_expert_s*E_r (E_r = 256 experts on the rank),
    # with w = a = 1 + 4/128 (fp8 + one fp32 per 128).
    me = hw.accel.eff.moe
    h, i, e, k = DS
    w = 1.0 + 4.0 / 128.0
    b_e = 3 * h * i * w
    bw = 3350e9
    weight_s = 256 * b_e / (bw * float(me.mem_eff) * b_e / (b_e + float(me.weight_half_bytes)))
    act = 256.0 * (h * (2 + w + 4) + i * (4 + 2 + w)) + float(me.permute_passes) * 32 * h * 2
    act += float(me.block_act_passes) * 256.0 * h * 2
    act_s = act / (bw * float(me.act_mem_eff))
    want = weight_s + act_s + float(me.routing_s) + float(me.assign_s) * 32 * k
    want += float(me.block_expert_s) * 256.0
    assert float(me.weight_half_bytes) > 0 and float(me.act_mem_eff) != float(me.mem_eff)
    assert float(me.block_act_passes) > 0 and float(me.block_expert_s) > 0
    c = moe_layer_cost(hw, 32.0, h, i, e, k, 1.0, 1.0, "fp8_block")
    assert float(c.memory_s) > float(c.compute_s)
    np.testing.assert_allclose(c.time_s, want, rtol=1e-9)
    np.testing.assert_allclose(c.memory_s, weight_s + act_s, rtol=1e-9)


def test_golden_compute_bound(hw):
    # T=16384 balanced bf16, tp=ep=1: A = T*k = 131072 rows over all 256 experts, m_e = 512
    # rows each (a multiple of tile_m_elems = 64, so η_tile = 1). The tensor-core time is
    # 2A*H*I*2/(P*ce*η_k(H)) + 2A*I*H/(P*ce*η_k(I)) with ce = moe.compute_eff a fraction of the
    # bf16 dense peak P = 989.4e12 (not scaled by gemm.compute_eff_bf16) and
    # η_k(x) = x/(x + moe.k_half_elems).
    me = hw.accel.eff.moe
    h, i, e, k = DS
    a = 16384.0 * k
    p = 989.4e12 * float(me.compute_eff)
    kh = float(me.k_half_elems)
    want = 2 * a * h * i * 2 / (p * h / (h + kh)) + 2 * a * i * h / (p * i / (i + kh))
    c = moe_layer_cost(hw, 16384.0, h, i, e, k, 1.0, 1.0, "bf16")
    np.testing.assert_allclose(c.compute_s, want, rtol=1e-6)
    np.testing.assert_allclose(c.flop, 2 * a * h * i * 3, rtol=1e-12)
    slower_dense = eqx.tree_at(lambda x: x.accel.eff.gemm.compute_eff_bf16, hw, jnp.asarray(0.5))
    np.testing.assert_allclose(
        moe_layer_cost(slower_dense, 16384.0, h, i, e, k, 1.0, 1.0, "bf16").compute_s,
        c.compute_s,
        rtol=1e-12,
    )


def test_own_k_half(hw):
    # The grouped GEMMs' short-reduction factor η_k(x) = x/(x + moe.k_half_elems) is their own,
    # not the dense GEMMs' gemm.k_half_elems: with moe.k_half_elems = 100 the compute-bound
    # golden above is 2A*H*I*2/(P*ce*H/(H + 100)) + 2A*I*H/(P*ce*I/(I + 100)), the dense value
    # does not enter, and 0 removes the factor (2A*H*I*3/(P*ce)).
    me = hw.accel.eff.moe
    h, i, e, k = DS
    a = 16384.0 * k
    p = 989.4e12 * float(me.compute_eff)
    want = 2 * a * h * i * 2 / (p * h / (h + 100.0)) + 2 * a * i * h / (p * i / (i + 100.0))
    with_k = lambda v: eqx.tree_at(lambda x: x.accel.eff.moe.k_half_elems, hw, jnp.asarray(v))
    cost = lambda hw_: moe_layer_cost(hw_, 16384.0, h, i, e, k, 1.0, 1.0, "bf16").compute_s
    np.testing.assert_allclose(cost(with_k(100.0)), want, rtol=1e-6)
    dense = eqx.tree_at(lambda x: x.accel.eff.gemm.k_half_elems, with_k(100.0), jnp.asarray(5e3))
    np.testing.assert_allclose(cost(dense), cost(with_k(100.0)), rtol=1e-12)
    np.testing.assert_allclose(cost(with_k(0.0)), 2 * a * h * i * 3 / p, rtol=1e-12)


def test_weight_only_large_row_tile(hw):
    # H100's weight-only grouped GEMM pads the rows per expert to wo_tile_m_elems = 32 up to
    # 32 rows and to wo_tile_m_large_elems = 128 above. gpt-oss (E = 128, k = 4) balanced on
    # one rank: m_e = T*k/E = T/32 rows on every expert, the tensor-core time is
    # c(T) ∝ T/η_tile with η_tile = m_e/(ceil(m_e/tile)*tile):
    #   T = 1024: m_e = 32,  tile 32,  η = 1     -> c ∝ 1024
    #   T = 1536: m_e = 48,  tile 128, η = 3/8   -> c ∝ 4096
    #   T = 4096: m_e = 128, tile 128, η = 1     -> c ∝ 4096
    # so 48 to 128 rows cost one 128-row tile: c(1536) = c(4096) = 4*c(1024). Without the
    # switch (large tile = 32) 48 rows pad to 64: c(1536) = 1536/(48/64) = 2*1024.
    me = hw.accel.eff.moe
    assert (float(me.wo_tile_m_elems), float(me.wo_tile_m_large_elems)) == (32.0, 128.0)
    c = lambda hw_, t: float(
        moe_layer_cost(hw_, t, 2880.0, 2880.0, 128.0, 4.0, 1.0, 1.0, "w4a16_mxfp4").compute_s
    )
    np.testing.assert_allclose(c(hw, 1536.0), 4 * c(hw, 1024.0), rtol=1e-12)
    np.testing.assert_allclose(c(hw, 4096.0), 4 * c(hw, 1024.0), rtol=1e-12)
    one = eqx.tree_at(lambda x: x.accel.eff.moe.wo_tile_m_large_elems, hw, jnp.asarray(32.0))
    np.testing.assert_allclose(c(one, 1536.0), 2 * c(one, 1024.0), rtol=1e-12)
    # the switch is a step in the padding only: gradients stay finite on both sides of it
    g = jax.grad(
        lambda t: moe_layer_cost(hw, t, 2880.0, 2880.0, 128.0, 4.0, 1.0, 1.0, "w4a16_mxfp4").time_s
    )
    assert all(np.isfinite(float(g(t))) for t in (1024.0, 1025.0, 1536.0))


def test_balanced_load_by_ep(hw):
    # flop = 2*A*H*I_r*3 with A = λ*T*k/ep: λ(1) = 1 whatever imbalance is, and
    # λ(4) = 1 + (imbalance - 1)*(1 - 1/4); with imbalance 1.4: λ(4) = 1.3.
    h, i, e, k = DS
    hw2 = eqx.tree_at(lambda x: x.accel.eff.moe.imbalance, hw, jnp.asarray(1.4))
    flop = lambda ep: float(moe_layer_cost(hw2, 4096.0, h, i, e, k, 1.0, ep, "bf16").flop)
    base = 2 * 4096.0 * k * h * i * 3
    np.testing.assert_allclose(flop(1.0), base, rtol=1e-12)
    np.testing.assert_allclose(flop(4.0), base / 4 * 1.3, rtol=1e-12)


def test_balanced_straggler_does_not_spill_a_tile(hw):
    # Qwen3-30B-A3B (H=2048, I=768, E=128, k=8) at T=1024, ep=2, balanced: every expert gets
    # exactly T*k/E = 64 rows, one whole tile of tile_m_elems = 64. The balanced load factor
    # λ = 1 + (imbalance-1)(1-1/2) scales the rank's work (A = λ*T*k/ep) but not the padding
    # (m_e = A/(λ*E_t) = 64 rows, η_tile = 1), so the tensor-core time is exactly λ times
    # that of imbalance = 1: 1.005 at imbalance 1.01, not the ~2x of a spilled 65th row.
    args = (1024.0, 2048.0, 768.0, 128.0, 8.0, 1.0, 2.0, "bf16")
    assert float(hw.accel.eff.moe.tile_m_elems) == 64.0
    at = lambda v: eqx.tree_at(lambda x: x.accel.eff.moe.imbalance, hw, jnp.asarray(v))
    c1 = moe_layer_cost(at(1.0), *args).compute_s
    c2 = moe_layer_cost(at(1.01), *args).compute_s
    np.testing.assert_allclose(c2 / c1, 1.005, rtol=1e-12)


def test_weight_only_row_tile(hw):
    # wo_tile_m_elems pads only weight-only GEMMs: T=16, k=8, ep=16 gives A = 8 rows on the
    # rank over its 16 experts; doubling the weight-only tile doubles their padded compute
    # (η_tile = m_e/tile while m_e < tile) and leaves bf16 unchanged.
    args = (16.0, *DS, 1.0, 16.0)
    hw2 = eqx.tree_at(
        lambda x: x.accel.eff.moe.wo_tile_m_elems, hw, hw.accel.eff.moe.wo_tile_m_elems * 2
    )
    c1 = moe_layer_cost(hw, *args, "w4a16_mxfp4")
    c2 = moe_layer_cost(hw2, *args, "w4a16_mxfp4")
    np.testing.assert_allclose(c2.compute_s, 2 * c1.compute_s, rtol=1e-12)
    np.testing.assert_allclose(
        moe_layer_cost(hw2, *args, "bf16").time_s, moe_layer_cost(hw, *args, "bf16").time_s
    )


def test_weight_only_path_cost(hw):
    # w4a16 adds wo_fixed_s*T/(T + wo_fixed_tokens_half) + wo_assign_s*T*k to the routing chain
    # (module docstring); with wo_fixed_s and wo_assign_s set to zero the rest of the layer is
    # unchanged, so the difference at T tokens, k = 4, is exactly that sum. hopper's grow-in
    # half is h = 1.495 tokens: at T = h the fixed part is wo_fixed_s/2, at T = 16 it is
    # wo_fixed_s*16/17.495 (0.915 of it); with h = 0 it is the whole wo_fixed_s at one token.
    me = hw.accel.eff.moe
    h = float(me.wo_fixed_tokens_half)
    assert h == pytest.approx(1.495) and float(me.wo_fixed_s) > 0
    hw0 = eqx.tree_at(
        lambda x: (x.accel.eff.moe.wo_fixed_s, x.accel.eff.moe.wo_assign_s),
        hw,
        (jnp.asarray(0.0), jnp.asarray(0.0)),
    )
    no_ramp = eqx.tree_at(lambda x: x.accel.eff.moe.wo_fixed_tokens_half, hw, jnp.asarray(0.0))
    no_ramp0 = eqx.tree_at(lambda x: x.accel.eff.moe.wo_fixed_tokens_half, hw0, jnp.asarray(0.0))
    shape = (2880.0, 2880.0, 128.0, 4.0, 1.0, 2.0, "w4a16_mxfp4")
    d = lambda a, b, t: float(
        moe_layer_cost(a, t, *shape).time_s - moe_layer_cost(b, t, *shape).time_s
    )
    fixed, per = float(me.wo_fixed_s), float(me.wo_assign_s)
    np.testing.assert_allclose(d(hw, hw0, 16.0), fixed * 16 / (16 + h) + 64 * per, rtol=1e-9)
    np.testing.assert_allclose(d(hw, hw0, h), fixed / 2 + 4 * h * per, rtol=1e-9)
    np.testing.assert_allclose(d(no_ramp, no_ramp0, 1.0), fixed + 4 * per, rtol=1e-9)
    # the grow-in's gradient in the tokens is finite at one token and at the switch h = 0
    g = jax.grad(lambda t: moe_layer_cost(no_ramp, t, *shape).time_s)(1.0)
    assert np.isfinite(float(g))


def test_block_scaled_path_cost(hw):
    # fp8_block layers add block_expert_s*E_r (every expert held on the rank) to the routing
    # chain and block_act_passes*A*H*2 bytes at bw*act_mem_eff (module docstring), so the
    # exact derivatives are E_r and A*H*2/(bw*act_mem_eff). DeepSeek-V3, T=32 balanced:
    # ep=1 holds E_r = 256 experts and A = 32*8 = 256 assignments; ep=16 holds E_r = 16 and,
    # at λ = 1 + (imbalance-1)(1-1/16), A = 16*λ.
    me = hw.accel.eff.moe
    h = DS[0]
    bw_act = 3350e9 * float(me.act_mem_eff)

    def grads(ep, dtype):
        f = lambda m: (
            moe_layer_cost(
                eqx.tree_at(lambda x: x.accel.eff.moe, hw, m), 32.0, *DS, 1.0, ep, dtype
            ).time_s
        )
        g = jax.grad(f)(me)
        return float(g.block_expert_s), float(g.block_act_passes), float(g.block_compute_eff)

    lam16 = 1.0 + (float(me.imbalance) - 1.0) * (1.0 - 1.0 / 16.0)
    for ep, e_r, a in ((1.0, 256.0, 256.0), (16.0, 16.0, 16.0 * lam16)):
        g_exp, g_pass, _ = grads(ep, "fp8_block")
        np.testing.assert_allclose(g_exp, e_r, rtol=1e-9)
        np.testing.assert_allclose(g_pass, a * h * 2.0 / bw_act, rtol=1e-6)
    # other formats do not see the block-scaled path at all
    assert grads(1.0, "bf16") == (0.0, 0.0, 0.0)
    assert grads(1.0, "fp8") == (0.0, 0.0, 0.0)
    # compute-bound fp8_block (T=16384, tp=ep=1): the tensor-core time scales as
    # 1/block_compute_eff, and the dense GEMMs' block_scale_eff does not enter
    half = eqx.tree_at(
        lambda x: x.accel.eff.moe.block_compute_eff, hw, hw.accel.eff.moe.block_compute_eff / 2
    )
    dense = eqx.tree_at(lambda x: x.accel.eff.gemm.block_scale_eff, hw, jnp.asarray(0.1))
    c = moe_layer_cost(hw, 16384.0, *DS, 1.0, 1.0, "fp8_block")
    np.testing.assert_allclose(
        moe_layer_cost(half, 16384.0, *DS, 1.0, 1.0, "fp8_block").compute_s, 2 * c.compute_s
    )
    np.testing.assert_allclose(
        moe_layer_cost(dense, 16384.0, *DS, 1.0, 1.0, "fp8_block").time_s, c.time_s, rtol=1e-12
    )
    # gradient in block_compute_eff against a central finite difference
    f = lambda v: (
        moe_layer_cost(
            eqx.tree_at(lambda x: x.accel.eff.moe.block_compute_eff, hw, v),
            16384.0,
            *DS,
            1.0,
            1.0,
            "fp8_block",
        ).time_s
    )
    v0, dv = float(me.block_compute_eff), 1e-4
    fd = (float(f(jnp.asarray(v0 + dv))) - float(f(jnp.asarray(v0 - dv)))) / (2 * dv)
    np.testing.assert_allclose(float(jax.grad(f)(jnp.asarray(v0))), fd, rtol=1e-4)
    assert fd < 0


def test_ep_and_tp_shrink_work(hw):
    f = lambda tp, ep: float(moe_layer_cost(hw, 4096.0, *DS, tp, ep, "fp8_block").time_s)
    assert f(1.0, 8.0) < f(1.0, 1.0)
    assert f(8.0, 1.0) < f(1.0, 1.0)


def _generator_busiest_load(tokens, top_k, experts, ep, alpha, draws, seed):
    """Monte Carlo of the skewed-routing workload that busiest_rank_load models (expert loads
    from p(x) ∝ x^-alpha on [1, 0.8 T], contiguous blocks of E/ep experts per rank): mean
    over draws of the busiest rank's load over the mean rank's."""
    rng = np.random.default_rng(seed)
    return float(np.mean(sample_busiest_rank_load(tokens, top_k, experts, ep, alpha, draws, rng)))


@pytest.mark.parametrize(
    "tokens, top_k, experts, ep",
    [(1024.0, 8, 128, 8), (16384.0, 8, 256, 64), (128.0, 8, 256, 16), (16384.0, 4, 128, 128)],
)
def test_busiest_rank_load_matches_the_workload(tokens, top_k, experts, ep):
    # the closed form (one-big-draw and many-small-draws limits, combined) against 4000
    # draws of the workload itself: within 10% on these shapes (DeepSeek-, Qwen3- and
    # gpt-oss-like, 128-16384 tokens); the generator's factor spans 1.6x-19x here
    want = _generator_busiest_load(tokens, top_k, experts, ep, 1.2, 4000, seed=ep)
    got = float(busiest_rank_load(tokens, float(top_k), float(experts), float(ep), 1.2))
    np.testing.assert_allclose(got, want, rtol=0.10)


def test_busiest_rank_load_limits():
    # one rank holds every expert: exactly the mean load, whatever the skew or token count
    for t in (1.0, 64.0, 16384.0):
        np.testing.assert_allclose(busiest_rank_load(t, 8.0, 256.0, 1.0, 1.2), 1.0, rtol=1e-12)
    # more ranks share the same loads: the busiest carries more over the mean
    f = [float(busiest_rank_load(4096.0, 8.0, 256.0, ep, 1.2)) for ep in (2.0, 8.0, 32.0, 128.0)]
    assert all(b > a for a, b in zip(f, f[1:])) and f[0] > 1.0
    # finite gradients in tokens (the power-law range grows with T), jit and vmap agree
    g = jax.grad(lambda t: busiest_rank_load(t, 8.0, 256.0, 16.0, 1.2))(1000.0)
    assert bool(jnp.isfinite(g)) and float(g) > 0
    ts = jnp.array([16.0, 1000.0, 16384.0])
    v = jax.jit(jax.vmap(lambda t: busiest_rank_load(t, 8.0, 256.0, 16.0, 1.2)))(ts)
    for t, vv in zip(ts, v):
        np.testing.assert_allclose(vv, busiest_rank_load(t, 8.0, 256.0, 16.0, 1.2), rtol=1e-12)


def test_skew_loads_rank0(hw):
    f = lambda s: float(moe_layer_cost(hw, 8192.0, *DS, 1.0, 16.0, "fp8_block", skew=s).time_s)
    assert f(1.2) > f(0.0)


@pytest.mark.parametrize("tokens", [1.0, 32.0, 1000.5])
def test_finite_grads(hw, tokens):
    for tau in (0.0, 0.05):
        fn = lambda t, s: moe_layer_cost(hw, t, *DS, 1.0, 4.0, "fp8_block", skew=s, tau=tau).time_s
        g = jax.grad(fn, argnums=(0, 1))(tokens, 1.2)
        assert all(bool(jnp.isfinite(x)) for x in g)
    gh = eqx.filter_grad(lambda h: moe_layer_cost(h, tokens, *DS, 1.0, 1.0, "bf16").time_s)(hw)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(gh))


def test_grad_vs_fd(hw):
    # smooth region (tokens past saturation, memory leg): central FD on log tokens
    f = lambda lt: jnp.log(moe_layer_cost(hw, jnp.exp(lt), *DS, 1.0, 8.0, "bf16", skew=1.2).time_s)
    x = jnp.log(200.0)
    eps = 1e-6
    fd = (f(x + eps) - f(x - eps)) / (2 * eps)
    np.testing.assert_allclose(jax.grad(f)(x), fd, rtol=1e-4, atol=1e-8)


def test_jit_eager_vmap(hw):
    ts = jnp.array([1.0, 7.0, 64.0, 900.0, 16384.0])
    f = lambda t: moe_layer_cost(hw, t, *DS, 1.0, 8.0, "fp8_block", skew=1.2).time_s
    vm = jax.vmap(f)(ts)
    jf = jax.jit(f)
    for i, t in enumerate(ts):
        np.testing.assert_allclose(jf(t), f(t), rtol=1e-12)
        np.testing.assert_allclose(vm[i], f(t), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["bf16", "fp8_block", "w4a16_mxfp4"])
def test_monotone(hw, dtype):
    ts = jnp.exp(jnp.linspace(0.0, jnp.log(16384.0), 40))
    f = lambda h: jax.vmap(lambda t: moe_layer_cost(h, t, *DS, 1.0, 4.0, dtype, skew=1.2).time_s)(
        ts
    )
    base = f(hw)
    assert bool(jnp.all(jnp.diff(base) >= -1e-15))  # more tokens never faster
    more_bw = eqx.tree_at(lambda h: h.accel.hbm.bw_bytes_per_s, hw, hw.accel.hbm.bw_bytes_per_s * 2)
    more_pk = eqx.tree_at(
        lambda h: (h.accel.peak_bf16_flop_per_s, h.accel.peak_fp8_flop_per_s),
        hw,
        (hw.accel.peak_bf16_flop_per_s * 2, hw.accel.peak_fp8_flop_per_s * 2),
    )
    assert bool(jnp.all(f(more_bw) <= base))
    assert bool(jnp.all(f(more_pk) <= base))


@pytest.mark.validation
def test_validation_moe():
    if not (DATA / "moe.csv").exists():
        pytest.skip("measured data folder absent")
    assert_median_error_bars(DATA / "moe.csv", 0.25)
