"""MoE layer cost model: experts-touched limits, golden values, gradients, physics, validation."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.hardware import load_hardware
from diffperf.ops._moe import expected_experts_touched, moe_layer_cost

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
    # (f = min(1, Tk/E) = 1); A = 256*imbalance local assignments (skew = 0), m_e = A/256 rows
    # per expert, so the weight stream beats the tensor cores and (module docstring):
    # t = [256*3*H*I*w + A*(H*(2+a+4) + I*(2*2+2+a)) + passes*T*H*2] / (bw*mem_eff)
    #     + routing_s + assign_s*T*k, with w = a = 1 + 4/128 (fp8 + one fp32 per 128).
    me = hw.accel.eff.moe
    h, i, e, k = DS
    w = 1.0 + 4.0 / 128.0
    a = 256.0 * float(me.imbalance)
    b = (
        256 * 3 * h * i * w
        + a * (h * (2 + w + 4) + i * (4 + 2 + w))
        + float(me.permute_passes) * 32 * h * 2
    )
    want = b / (3350e9 * float(me.mem_eff)) + float(me.routing_s) + float(me.assign_s) * 32 * k
    c = moe_layer_cost(hw, 32.0, h, i, e, k, 1.0, 1.0, "fp8_block")
    assert float(c.memory_s) > float(c.compute_s)
    np.testing.assert_allclose(c.time_s, want, rtol=1e-9)


def test_weight_only_path_cost(hw):
    # w4a16 adds wo_fixed_s + wo_assign_s*T*k to the routing chain (module docstring); with
    # those two set to zero the rest of the layer is unchanged, so the difference at T=16,
    # k=4 is exactly wo_fixed_s + 64*wo_assign_s.
    me = hw.accel.eff.moe
    hw0 = eqx.tree_at(
        lambda h: (h.accel.eff.moe.wo_fixed_s, h.accel.eff.moe.wo_assign_s),
        hw,
        (jnp.asarray(0.0), jnp.asarray(0.0)),
    )
    args = (16.0, 2880.0, 2880.0, 128.0, 4.0, 1.0, 2.0, "w4a16_mxfp4")
    d = moe_layer_cost(hw, *args).time_s - moe_layer_cost(hw0, *args).time_s
    np.testing.assert_allclose(d, float(me.wo_fixed_s) + 64 * float(me.wo_assign_s), rtol=1e-9)
    assert float(me.wo_fixed_s) > 0


def test_ep_and_tp_shrink_work(hw):
    f = lambda tp, ep: float(moe_layer_cost(hw, 4096.0, *DS, tp, ep, "fp8_block").time_s)
    assert f(1.0, 8.0) < f(1.0, 1.0)
    assert f(8.0, 1.0) < f(1.0, 1.0)


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
