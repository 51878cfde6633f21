"""Collective-communication cost model: goldens, edges, gradients, transforms, validation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.hardware import CommEfficiency, load_hardware
from diffperf.ops import _collectives as C

from .helpers import all_finite, finite_difference_grad, shared_data_dir


GiB = 2.0**30


def _hw_clean():
    """H100 fabric (450 GB/s per direction, 3 us, 8-GPU domains, 50 GB/s NIC, 8 us) with
    round efficiency numbers so the goldens can be derived by hand: base 5 us, per-step
    latency = 1 x fabric latency, 80% bandwidth on both tiers, no small-group loss, no
    saturation (saturation_bytes = 0), no NVLS."""
    hw = load_hardware("h100-sxm")
    eff = CommEfficiency(
        base_latency_s=5e-6,
        scaleup_latency_factor=1.0,
        scaleout_latency_factor=1.0,
        scaleup_bw_eff=0.8,
        scaleout_bw_eff=0.8,
        small_group_loss=0.0,
        saturation_bytes=0.0,
        saturation_exponent=0.5,
        scaleout_saturation_bytes=0.0,
        allreduce_bw_factor=1.0,
        alltoall_bw_factor=1.0,
        alltoall_small_group_loss=0.0,
        nvls_bw_eff=0.0,
        nvls_latency_s=30e-6,
        custom_latency_s=2e-6,
        custom_bw_eff=0.8,
        ht_latency_s=50e-6,
        ht_bw_eff=0.8,
        ht_per_copy_s=0.0,
        ll_latency_s=40e-6,
        ll_bw_eff=0.8,
        ll_per_copy_s=0.0,
        ll_combine_latency_s=30e-6,
        combine_bw_factor=1.0,
        ll_combine_bw_factor=1.0,
        p2p_ll_threshold_bytes=16384.0,
        p2p_simple_latency_s=0.0,
        p2p_channel_bw_bytes_per_s=0.0,
    )
    return eqx.tree_at(lambda h: h.accel.eff.comm, hw, eff)


HW = load_hardware("h100-sxm")
HWC = _hw_clean()
BW_UP = 450e9 * 0.8
BW_OUT = 50e9 * 0.8


# ----------------------------------------------------------------------------- goldens


def test_ring_all_reduce_8_golden():
    # Ring all-reduce on 8 GPUs of one domain (Thakur et al. 2005): each GPU sends
    # 2(n-1)/n * S bytes in 2(n-1) steps: t = base + 14 * 3 us + 2*7/8 * S / (450e9 * 0.8).
    S = 1.0 * GiB
    want = 5e-6 + 14 * 3e-6 + 2 * 7 / 8 * S / BW_UP
    got = C.all_reduce_cost(HWC, S, 8.0).time_s
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert C.all_reduce_cost(HWC, S, 8.0).comm_s == got


def test_all_gather_hierarchical_16_golden():
    # 16 GPUs on 8-GPU domains: g = 8 per domain, m = 2 domains. Intra ring all-gather of
    # the full S: (8-1)/8 * S over NVLink in 7 steps; inter ring over 2 domains on the NIC:
    # each GPU carries (m-1)/n * S = S/16 in 1 step of 8 us.
    S = 256e6
    want = 5e-6 + 7 * 3e-6 + 7 / 8 * S / BW_UP + 8e-6 + S / 16 / BW_OUT
    np.testing.assert_allclose(C.all_gather_cost(HWC, S, 16.0).time_s, want, rtol=1e-9)
    np.testing.assert_allclose(C.reduce_scatter_cost(HWC, S, 16.0).time_s, want, rtol=1e-9)


def test_all_reduce_hierarchical_16_golden():
    # intra ring all-reduce over 8 (2*7/8 S, 14 steps) + inter ring all-reduce over 2
    # domains on the S/8 slice each GPU owns: 2*(2-1)/2 * S/8 = S/8 bytes, 2 steps of 8 us.
    S = 64e6
    want = 5e-6 + 14 * 3e-6 + 1.75 * S / BW_UP + 2 * 8e-6 + S / 8 / BW_OUT
    np.testing.assert_allclose(C.all_reduce_cost(HWC, S, 16.0).time_s, want, rtol=1e-9)


def test_all_to_all_golden():
    # 8 GPUs in one domain: S/8 to each of 7 peers over NVLink, log2(8) = 3 latency steps.
    S = 128e6
    want = 5e-6 + 3 * 3e-6 + 7 / 8 * S / BW_UP
    np.testing.assert_allclose(C.all_to_all_cost(HWC, S, 8.0).time_s, want, rtol=1e-9)
    # 16 GPUs: 7/16 S inside (NVLink), 8/16 S across NICs concurrently; NIC leg dominates.
    want16 = 5e-6 + 3 * 3e-6 + 1 * 8e-6 + 8 / 16 * S / BW_OUT
    np.testing.assert_allclose(C.all_to_all_cost(HWC, S, 16.0).time_s, want16, rtol=1e-9)


def test_all_to_all_channel_ceiling_and_small_group_loss_golden():
    # NCCL's p2p channels (aggregate 400 GB/s here) carry the whole send buffer S, self copy
    # included, concurrently with the links (0.8 x 450 = 360 GB/s), which carry (g-1)/g S:
    #   g = 8: links 7/8 S / 360e9 = 2.43e-12 s/B x S, channels S / 400e9 = 2.50e-12 s/B x S:
    #          the channels bound it (the peers get 7/8 of 400 = 350 GB/s < 360);
    #   g = 2: links 1/2 S / 360e9 = 1.39e-12 s/B x S < 2.50e-12: channel bound, the peers get
    #          1/2 of 400 = 200 GB/s -- about half the 8-GPU rate, as B200 measures (332 vs
    #          563 GB/s busbw at 2 and 8 GPUs).
    S = 128e6
    hw = eqx.tree_at(lambda h: h.accel.eff.comm.p2p_channel_bw_bytes_per_s, HWC, jnp.asarray(400e9))
    for n, steps in ((8.0, 3), (2.0, 1)):
        want = 5e-6 + steps * 3e-6 + S / 400e9
        np.testing.assert_allclose(C.all_to_all_cost(hw, S, n).time_s, want, rtol=1e-9)
    # a ceiling far above the links changes nothing (8 GPUs: 7/8 S / 360e9 as without it)
    hw_hi = eqx.tree_at(
        lambda h: h.accel.eff.comm.p2p_channel_bw_bytes_per_s, HWC, jnp.asarray(1e13)
    )
    want = 5e-6 + 3 * 3e-6 + 7 / 8 * S / BW_UP
    np.testing.assert_allclose(C.all_to_all_cost(hw_hi, S, 8.0).time_s, want, rtol=1e-9)
    # the all-to-all's own small-group loss (a direct mesh): eff(g) = 0.8 (1 - 0.5/g); the
    # ring collectives keep theirs (small_group_loss = 0 here) and do not change
    hw_l = eqx.tree_at(lambda h: h.accel.eff.comm.alltoall_small_group_loss, HWC, jnp.asarray(0.5))
    want2 = 5e-6 + 1 * 3e-6 + 1 / 2 * S / (450e9 * 0.8 * (1 - 0.5 / 2))
    np.testing.assert_allclose(C.all_to_all_cost(hw_l, S, 2.0).time_s, want2, rtol=1e-9)
    np.testing.assert_allclose(
        C.all_gather_cost(hw_l, S, 2.0).time_s, C.all_gather_cost(HWC, S, 2.0).time_s
    )
    # gradients in the ceiling: negative where it binds, zero where it does not, and finite
    # at 0 (no ceiling) and at the relaxed edge n = 1

    def t_of(bw, n):
        h = eqx.tree_at(lambda h: h.accel.eff.comm.p2p_channel_bw_bytes_per_s, HWC, bw)
        return C.all_to_all_cost(h, S, n, tau=0.05).time_s

    g_bind = jax.grad(t_of)(jnp.asarray(200e9), 2.0)
    np.testing.assert_allclose(g_bind, -S / 200e9**2, rtol=0.05)
    assert abs(float(jax.grad(t_of)(jnp.asarray(1e13), 8.0))) < 1e-30
    for bw, n in ((0.0, 8.0), (400e9, 1.0)):
        assert all_finite(jax.grad(t_of, argnums=(0, 1))(jnp.asarray(bw), jnp.asarray(n)))


def test_p2p_protocol_switch_golden():
    # NCCL leaves its LL protocol above 16 KiB per peer: with p2p_simple_latency_s = 4 us the
    # all-to-all of 8 ranks costs exactly 4 us more once S/8 > 16384 B (S > 131072 B), and
    # nothing more at or below it; send/recv switches at S > 16384 B.
    hw4 = eqx.tree_at(lambda h: h.accel.eff.comm.p2p_simple_latency_s, HWC, jnp.asarray(4e-6))
    for S, extra in ((131072.0, 0.0), (131073.0, 4e-6), (1e3, 0.0), (1e8, 4e-6)):
        d = C.all_to_all_cost(hw4, S, 8.0).time_s - C.all_to_all_cost(HWC, S, 8.0).time_s
        np.testing.assert_allclose(d, extra, rtol=1e-9, atol=1e-15)
    for S, extra in ((16384.0, 0.0), (16385.0, 4e-6)):
        d = C.p2p_cost(hw4, S, 0.0).time_s - C.p2p_cost(HWC, S, 0.0).time_s
        np.testing.assert_allclose(d, extra, rtol=1e-9, atol=1e-15)
    # tau > 0: a logistic blend in log(per-peer bytes / threshold), half-way at the threshold
    d = C.all_to_all_cost(hw4, 131072.0, 8.0, tau=0.1).time_s
    d = d - C.all_to_all_cost(HWC, 131072.0, 8.0, tau=0.1).time_s
    np.testing.assert_allclose(d, 2e-6, rtol=1e-6)
    g = jax.grad(lambda s: C.all_to_all_cost(hw4, s, 8.0, tau=0.1).time_s)(131072.0)
    assert bool(jnp.isfinite(g)) and float(g) > 0
    # a threshold of 0 (no NCCL) always pays the Simple latency
    hw0 = eqx.tree_at(lambda h: h.accel.eff.comm.p2p_ll_threshold_bytes, hw4, jnp.asarray(0.0))
    d = C.all_to_all_cost(hw0, 1e3, 8.0).time_s - C.all_to_all_cost(HWC, 1e3, 8.0).time_s
    np.testing.assert_allclose(d, 4e-6, rtol=1e-9)


def test_group_limited_routing_golden():
    # DeepSeek-V3 (top-8 of 256 experts from 4 of 8 groups) on 8 ranks, one group per rank
    # (q = 1): every picked group holds one of the 4 leading experts, so a token reaches
    # exactly the 4 picked ranks: P = 4/8. On 16 ranks (q = 1/2): P = (4/8)(1 − (1 − 1/2)
    # (1 − 1/8)^4) = 0.5·(1 − 0.5·0.586182) = 0.353455. Unrestricted: 1 − (7/8)^8.
    from diffperf.ops._moe import rank_hit_probability as hit

    np.testing.assert_allclose(hit(8.0, 8.0, 8.0, 4.0), 0.5, rtol=1e-6)
    np.testing.assert_allclose(hit(16.0, 8.0, 8.0, 4.0), 0.5 * (1 - 0.5 * 0.875**4), rtol=1e-6)
    np.testing.assert_allclose(hit(8.0, 8.0), 1 - (7 / 8) ** 8, rtol=1e-6)
    np.testing.assert_allclose(hit(8.0, 2.0, 8.0, 4.0), 2 / 8, rtol=1e-6)  # top-2: 2 groups
    # the two forms meet at q = 1 (ep = G) and the gradient is finite there
    np.testing.assert_allclose(hit(7.999, 8.0, 8.0, 4.0), hit(8.001, 8.0, 8.0, 4.0), atol=1e-4)
    g = jax.grad(hit, argnums=(0, 1, 3))(8.0, 8.0, 8.0, 4.0)
    assert all(bool(jnp.isfinite(x)) for x in g)
    # HT dispatch: remote destinations (ep − 1)·P, so the bandwidth term shrinks by 0.5/0.656
    ht = lambda *r: C.moe_dispatch_cost(HWC, 4096.0, 7168.0, 8.0, 256.0, 8.0, "bf16", *r)
    lim = C.moe_dispatch_cost(
        HWC, 4096.0, 7168.0, 8.0, 256.0, 8.0, routing_groups=8.0, routing_topk_groups=4.0
    )
    assert float(lim.time_s) < float(ht().time_s)


def test_custom_all_reduce_golden():
    # TRT-LLM custom all-reduce on 4 GPUs: one-shot reads 3 peers' full buffers in 1 step;
    # two-shot moves 2*3/4 S in 2 steps; the faster one is taken.
    for S in (64e3, 64e6):
        one = 2e-6 + 3e-6 + 3 * S / BW_UP
        two = 2e-6 + 2 * 3e-6 + 1.5 * S / BW_UP
        got = C.all_reduce_cost(HWC, S, 4.0, impl="custom").time_s
        np.testing.assert_allclose(got, min(one, two), rtol=1e-9)


def test_p2p_golden():
    S = 10e6
    up = 5e-6 + 3e-6 + S / BW_UP
    out = 5e-6 + 8e-6 + S / BW_OUT
    np.testing.assert_allclose(C.p2p_cost(HWC, S, 0.0).time_s, up, rtol=1e-9)
    np.testing.assert_allclose(C.p2p_cost(HWC, S, 1.0).time_s, out, rtol=1e-9)
    np.testing.assert_allclose(C.p2p_cost(HWC, S, 0.25).time_s, 0.75 * up + 0.25 * out, rtol=1e-9)


def test_moe_dispatch_golden():
    # DeepEP HT on 8 ranks, top-8: each of the 7 other ranks receives a token with
    # probability 1 - (7/8)^8; bf16 payload of 7168 elements = 14336 B per copy.
    T, H, k, ep = 4096.0, 7168.0, 8.0, 8.0
    remote = 7 * (1 - (7 / 8) ** 8)
    want = 50e-6 + T * remote * H * 2 / BW_UP
    got = C.moe_dispatch_cost(HWC, T, H, k, 256.0, ep, dtype="bf16", impl="deepep_ht").time_s
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # LL: one copy per routed expert, k*(ep-1)/ep remote copies, no dedup.
    want_ll = 40e-6 + T * k * 7 / 8 * H * 2 / BW_UP
    got_ll = C.moe_dispatch_cost(HWC, T, H, k, 256.0, ep, impl="trtllm_deepep_ll").time_s
    np.testing.assert_allclose(got_ll, want_ll, rtol=1e-9)


def test_combine_bandwidth_factor_per_kernel():
    # HT combine divides its bandwidth by combine_bw_factor, LL combine by
    # ll_combine_bw_factor, and neither factor touches the other kernel. Derivation (the
    # goldens above, bf16 payload on both): HT transfer T*remote*H*2/(BW_UP*f) with the HT
    # dedup count, LL transfer T*k*(ep-1)/ep*H*2/(BW_UP*f); the LL combine latency is
    # ll_combine_latency_s = 30 us.
    T, H, k, ep = 4096.0, 7168.0, 8.0, 8.0
    ht_bytes = T * 7 * (1 - (7 / 8) ** 8) * H * 2
    ll_bytes = T * k * 7 / 8 * H * 2
    comm = HWC.accel.eff.comm
    hw = eqx.tree_at(
        lambda h: (h.accel.eff.comm.combine_bw_factor, h.accel.eff.comm.ll_combine_bw_factor),
        HWC,
        (jnp.asarray(0.5), jnp.asarray(0.25)),
    )
    ht = C.moe_combine_cost(hw, T, H, k, 256.0, ep, impl="deepep_ht").time_s
    ll = C.moe_combine_cost(hw, T, H, k, 256.0, ep, impl="deepep_ll").time_s
    np.testing.assert_allclose(ht, float(comm.ht_latency_s) + ht_bytes / (BW_UP * 0.5), rtol=1e-9)
    np.testing.assert_allclose(ll, 30e-6 + ll_bytes / (BW_UP * 0.25), rtol=1e-9)

    # each kernel's time moves with its own factor only: d/df of the LL factor
    def combine_s(f, impl):
        h = eqx.tree_at(lambda h: h.accel.eff.comm.ll_combine_bw_factor, hw, f)
        return C.moe_combine_cost(h, T, H, k, 256.0, ep, impl=impl).time_s

    g_ht = jax.grad(combine_s)(jnp.asarray(0.25), "deepep_ht")
    g_ll = jax.grad(combine_s)(jnp.asarray(0.25), "deepep_ll")
    assert float(g_ht) == 0.0
    np.testing.assert_allclose(g_ll, -ll_bytes / (BW_UP * 0.25**2), rtol=1e-6)


def test_moe_fp4_payload_falls_back_to_fp8_on_hopper():
    # H100 has no fp4 tensor cores: nvfp4 activations travel as fp8 + fp32 scale / 128.
    T, H = 1024.0, 7168.0
    a = C.moe_dispatch_cost(HWC, T, H, 8.0, 256.0, 8.0, dtype="nvfp4").time_s
    b = C.moe_dispatch_cost(HWC, T, H, 8.0, 256.0, 8.0, dtype="fp8_block").time_s
    np.testing.assert_allclose(a, b, rtol=1e-12)


# ----------------------------------------------------------------------------- edges


FNS = {
    "all_reduce": lambda hw, s, n: C.all_reduce_cost(hw, s, n).time_s,
    "all_reduce_custom": lambda hw, s, n: C.all_reduce_cost(hw, s, n, impl="custom").time_s,
    "all_gather": lambda hw, s, n: C.all_gather_cost(hw, s, n).time_s,
    "reduce_scatter": lambda hw, s, n: C.reduce_scatter_cost(hw, s, n).time_s,
    "all_to_all": lambda hw, s, n: C.all_to_all_cost(hw, s, n).time_s,
    "moe_dispatch": lambda hw, s, n: C.moe_dispatch_cost(hw, s / 1e4, 7168.0, 8.0, 256.0, n).time_s,
    "moe_combine_ll": lambda hw, s, n: (
        C.moe_combine_cost(hw, s / 1e4, 7168.0, 8.0, 256.0, n, impl="deepep_ll").time_s
    ),
}


@pytest.mark.parametrize("name", list(FNS))
def test_group_of_one_is_free_with_finite_grads(name):
    f = FNS[name]
    assert float(f(HW, 1e6, 1.0)) == 0.0
    g = jax.grad(f, argnums=(1, 2))(HW, 1e6, 1.0)
    assert all(np.isfinite(x) for x in g)
    assert all_finite(eqx.filter_grad(lambda h: f(h, 1e6, 1.0))(HW))


@pytest.mark.parametrize("name", list(FNS))
@pytest.mark.parametrize("n", [1.0, 8.0, 16.0])
def test_finite_grads_at_edges(name, n):
    # n = 8 is exactly the domain size (the min(n, d) kink); n = 1 is the empty group.
    f = FNS[name]
    g = jax.grad(f, argnums=(1, 2))(HW, 4e6, n)
    assert all(np.isfinite(x) for x in g)
    g0 = jax.grad(f, argnums=(1, 2))(HW, 0.0, n)
    assert all(np.isfinite(x) for x in g0)


def test_zero_message_costs_only_latency():
    t = C.all_reduce_cost(HWC, 0.0, 8.0).time_s
    np.testing.assert_allclose(t, 5e-6 + 14 * 3e-6, rtol=1e-12)


def test_crossing_the_domain_pays_the_nic():
    for name in ("all_reduce", "all_gather", "all_to_all"):
        f = FNS[name]
        for S in (1e4, 1e6, 1e8):
            assert f(HW, S, 16.0) > f(HW, S, 8.0)
    # a fully cross-domain send is slower than an in-domain one
    assert C.p2p_cost(HW, 1e6, 1.0).time_s > C.p2p_cost(HW, 1e6, 0.0).time_s


# ----------------------------------------------------------------------------- physics


@pytest.mark.parametrize("name", list(FNS))
def test_monotone_in_message_size(name):
    f = FNS[name]
    sizes = jnp.logspace(2, 9, 29)
    ns = jnp.array([2.0, 4.0, 8.0, 16.0, 64.0])
    t = jax.vmap(lambda n: jax.vmap(lambda s: f(HW, s, n))(sizes))(ns)
    assert bool(jnp.all(jnp.diff(t, axis=1) >= -1e-15)), name


@pytest.mark.parametrize("name", list(FNS))
def test_more_bandwidth_never_slower(name):
    f = FNS[name]

    def t_of(bw_up, bw_out, n, s):
        hw = eqx.tree_at(
            lambda h: (h.fabric.scaleup_bw_bytes_per_s, h.fabric.scaleout_bw_bytes_per_s),
            HW,
            (bw_up, bw_out),
        )
        return f(hw, s, n)

    for n in (2.0, 8.0, 16.0):
        for s in (1e4, 1e7):
            g = jax.grad(t_of, argnums=(0, 1))(450e9, 50e9, n, s)
            assert g[0] <= 0 and g[1] <= 0


def test_fd_gradients_x64():
    def f(log_s, n):
        return C.all_reduce_cost(HW, jnp.exp(log_s), n).time_s * 1e3

    # interior points (n = 8 is the min(n, d) kink, checked for finiteness elsewhere)
    for s, n in ((1e5, 4.0), (3e7, 6.0), (3e7, 12.0), (2e8, 32.0)):
        x = float(np.log(s))
        ad = jax.grad(f, argnums=(0, 1))(x, n)
        fd_s = finite_difference_grad(lambda v: float(f(v, n)), x)
        fd_n = finite_difference_grad(lambda v: float(f(x, v)), n)
        np.testing.assert_allclose(ad[0], fd_s, rtol=1e-5, atol=1e-10)
        np.testing.assert_allclose(ad[1], fd_n, rtol=1e-4, atol=1e-9)

    def g(bw):
        hw = eqx.tree_at(lambda h: h.fabric.scaleup_bw_bytes_per_s, HW, bw * 1e9)
        return C.moe_dispatch_cost(hw, 4096.0, 7168.0, 8.0, 256.0, 8.0).time_s * 1e3

    np.testing.assert_allclose(
        jax.grad(g)(450.0), finite_difference_grad(lambda v: float(g(v)), 450.0), rtol=1e-5
    )


def test_smooth_tau_is_close_and_smooth():
    t0 = C.all_reduce_cost(HW, 1e7, 12.0).time_s
    t1 = C.all_reduce_cost(HW, 1e7, 12.0, tau=0.05).time_s
    assert abs(float(t1 / t0) - 1) < 0.15
    g = jax.grad(lambda n: C.all_reduce_cost(HW, 1e7, n, tau=0.05).time_s)(8.0)
    assert np.isfinite(g)


# ----------------------------------------------------------------------------- transforms


def test_jit_eager_vmap_agree():
    sizes = jnp.logspace(3, 8, 7)
    ns = jnp.array([1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 72.0])
    for f in FNS.values():
        eager = jnp.stack([f(HW, s, n) for s, n in zip(sizes, ns)])
        jitted = jnp.stack([eqx.filter_jit(f)(HW, s, n) for s, n in zip(sizes, ns)])
        vm = jax.vmap(f, in_axes=(None, 0, 0))(HW, sizes, ns)
        np.testing.assert_allclose(eager, jitted, rtol=1e-12)
        np.testing.assert_allclose(eager, vm, rtol=1e-12)


def test_single_trace_across_sweep():
    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def f(hw, s, n):
        return C.all_reduce_cost(hw, s, n).time_s

    for n in (2.0, 4.0, 8.0, 16.0):
        f(HW, jnp.asarray(1e6), jnp.asarray(n))


def test_bad_impl_raises():
    with pytest.raises(ValueError, match="impl"):
        C.all_reduce_cost(HW, 1e6, 8.0, impl="magic")


# ----------------------------------------------------------------------------- validation


@pytest.mark.validation
def test_validation_against_measured_tables():
    data = shared_data_dir()
    if data is None:
        pytest.skip("shared measured data not present")
    from diffperf.calibrate._predict_comm import predict_rows
    from diffperf.calibrate._tables import read_kernel_csv

    for fname, bar in (("collectives.csv", 0.15), ("moe_alltoall.csv", 0.25)):
        cols = read_kernel_csv(data / "kernels" / fname)
        for dev in np.unique(cols["device"]):
            try:
                hw = load_hardware(str(dev))
            except ValueError:
                continue
            m = cols["device"] == dev
            sub = {k: v[m] for k, v in cols.items()}
            rel = np.abs(predict_rows(hw, sub) / sub["latency_s"] - 1)
            key = np.char.add(np.char.add(sub["op"], "|"), sub["dtype"])
            for k in np.unique(key):
                med = float(np.median(rel[key == k]))
                assert med <= bar, (str(dev), str(k), med)
