"""Calibration: recovery of known parameters, robustness, physical bounds, held-out split,
uncertainty, preset round trip, clear errors, CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.calibrate import (
    TableError,
    concat_tables,
    predict_table,
    read_kernel_csv,
    write_csv,
)
from diffperf.calibrate._fit import (
    CalibrationError,
    FitConfig,
    _from_theta,
    _pseudo_huber,
    _psi,
    _to_theta,
    fit_efficiency,
    holdout_split,
    preset_toml,
    rows_for_device,
    shape_groups,
    with_efficiency,
)
from diffperf.calibrate._predict_memcpy import memcpy_time_s
from diffperf.cli import main
from diffperf.hardware import load_hardware

from .helpers import all_finite


# True parameters of the synthetic device: the h100-sxm preset with these GEMM-family values
# (all well inside the physical ranges, and far enough from the prior that the fit must move).
TRUTH = {
    ("gemm", "compute_eff_bf16"): 0.70,
    ("gemm", "compute_eff_fp8"): 0.60,
    ("gemm", "mem_eff"): 0.65,
    ("gemm", "mem_half_bytes"): 4.0e6,
    ("gemm", "k_half_elems"): 200.0,
    ("gemm", "launch_s"): 5.0e-6,
    # 1 (whole waves) in the hopper profile; m = 640 leaves a short last wave (n = 4096:
    # 5 x 32 = 160 tiles = 1.21 waves of 132 slots: 2 waves at share 1, 1.45 at 0.3)
    ("gemm", "wave_tail_share"): 0.3,
    # absent (0) in the hopper profile: the fit must switch it on (START_IF_ABSENT)
    ("gemm", "quant_launch_s"): 3.0e-6,
}


def _synthetic_table(noise: float, seed: int = 0, outliers: float = 0.0):
    """GEMM (bf16, fp8) and memcpy rows measured on the TRUTH device, with lognormal noise."""
    hw_true = with_efficiency(load_hardware("h100-sxm"), TRUTH)
    rows = []
    for dt in ("bf16", "fp8"):
        for n, k in (
            (1024, 1024),
            (4096, 1024),
            (1024, 4096),
            (4096, 4096),
            (8192, 2048),
            (4096, 256),
        ):
            for m in (1, 8, 64, 256, 640, 1024, 4096):
                rows.append(("gemm", dt, m, n, k, np.nan))
    for b in (2.0**p for p in range(16, 32, 2)):
        rows.append(("memcpy", "bf16", np.nan, np.nan, np.nan, b))
    cols = {
        "device": np.array(["synthetic"] * len(rows)),
        "op": np.array([r[0] for r in rows]),
        "dtype": np.array([r[1] for r in rows]),
        "m": np.array([r[2] for r in rows], dtype=float),
        "n": np.array([r[3] for r in rows], dtype=float),
        "k": np.array([r[4] for r in rows], dtype=float),
        "bytes": np.array([r[5] for r in rows], dtype=float),
    }
    t = predict_table(hw_true, cols)
    rng = np.random.default_rng(seed)
    t = t * np.exp(noise * rng.standard_normal(t.size))
    if outliers:
        bad = rng.choice(t.size, size=int(outliers * t.size), replace=False)
        t[bad] *= 4.0  # e.g. a timing that caught a context switch
    cols["latency_s"] = t
    return cols


@pytest.fixture(scope="module")
def clean_fit():
    cols = _synthetic_table(noise=0.01)
    return cols, fit_efficiency(load_hardware("h100-sxm"), cols, FitConfig(steps=1000))


def _values(res):
    return {(p.family, p.name): p for p in res.params}


def test_recovers_known_parameters(clean_fit):
    _, res = clean_fit
    got = _values(res)
    for key, true in TRUTH.items():
        # the tail share is a fraction that mostly the m = 640 rows see: within 0.03
        tol = {"rel": 0.05} if key[1] != "wave_tail_share" else {"abs": 0.03}
        assert got[key].value == pytest.approx(true, **tol), key
    # the prior (h100 hopper profile) was far from the truth: compute_eff_bf16 0.909 vs 0.70
    assert got[("gemm", "compute_eff_bf16")].prior == pytest.approx(0.909)
    # no fp4/int8/fp32 GEMM and no weight-only rows: those cannot be seen in this data
    assert "gemm.compute_eff_fp4" in res.unconstrained
    assert "gemm.dequant_eff" in res.unconstrained
    # the per-tensor fp8 rows exercise the quantisation kernels' fixed cost, whose prior is 0;
    # no block-scaled or fp4 rows: those fixed costs stay at their prior 0
    assert got[("gemm", "quant_launch_s")].prior == 0.0
    assert "gemm.scaled_launch_s" in res.unconstrained
    assert "gemm.fp4_launch_s" in res.unconstrained
    assert float(res.hw.accel.eff.gemm.scaled_launch_s) == 0.0
    # no fp8_block rows: the unaligned-m slow path cannot be seen either
    assert "gemm.unaligned_m_eff" in res.unconstrained
    assert res.families == ("gemm",)
    # 1% lognormal noise: the median |error| of the fit is about 0.67 * 1% (half-normal median)
    for r in res.train_errors:
        assert r["median_abs_rel_err"] < 0.02


def test_uncertainty_is_finite_and_covers_truth(clean_fit):
    _, res = clean_fit
    for key, p in _values(res).items():
        assert np.isfinite(p.std) and p.std > 0, key
        # within 5 sigma (the sandwich ignores model-form error; here the model is exact)
        if key in TRUTH:
            assert abs(p.value - TRUTH[key]) < 5 * p.std + 0.02 * TRUTH[key], key


def test_uncertainty_grows_with_noise(clean_fit):
    _, res_clean = clean_fit
    cols = _synthetic_table(noise=0.08, seed=1)
    res = fit_efficiency(load_hardware("h100-sxm"), cols, FitConfig(steps=1000))
    s_clean = _values(res_clean)[("gemm", "compute_eff_bf16")].std
    s_noisy = _values(res)[("gemm", "compute_eff_bf16")].std
    assert s_noisy > 3 * s_clean


# True MoE-family values of a second synthetic device (h100-sxm otherwise): every parameter of
# the bf16 MoE law far from the hopper profile's fitted values.
TRUTH_MOE = {
    ("moe", "compute_eff"): 0.80,
    ("moe", "mem_eff"): 0.80,
    ("moe", "act_mem_eff"): 0.50,
    ("moe", "weight_half_bytes"): 1.0e6,
    ("moe", "routing_s"): 2.5e-5,
    ("moe", "imbalance"): 1.2,
    ("moe", "skew_load_exponent"): 0.8,
    ("moe", "assign_s"): 2.0e-10,
    ("moe", "permute_passes"): 1.5,
}


def test_recovers_moe_parameters():
    """bf16 MoE layers (Mixtral-, Qwen3-30B- and Qwen3-235B-shaped; TP 1-8, EP 1-32, balanced
    and power-law routing, 1-16384 tokens) measured on the TRUTH_MOE device with 1% noise: the
    grouped-GEMM fraction and the activation kernels' bandwidth, which trade off on any one
    shape, are told apart by the spread of I/TP (compute ∝ A·H·I_r, activation traffic
    ∝ A·(H + I_r)); the per-expert weight ramp by the spread of expert sizes (1.2-350 MB)."""
    hw_true = with_efficiency(load_hardware("h100-sxm"), TRUTH_MOE)
    rows = []
    for h, i, e, k in ((4096, 14336, 8, 2), (2048, 768, 128, 8), (4096, 1536, 128, 8)):
        for tp, ep in ((1, 1), (1, 8), (4, 1), (8, 1), (1, 32)):
            if ep > e:
                continue
            for dist in ("balanced", "power_law_1.2"):
                for t in (1, 4, 16, 64, 256, 1024, 4096, 16384):
                    rows.append((t, h, i, e, k, tp, ep, dist))
    cols = {
        "device": np.array(["synthetic"] * len(rows)),
        "op": np.array(["moe"] * len(rows)),
        "dtype": np.array(["bf16"] * len(rows)),
        "distribution": np.array([r[7] for r in rows]),
    }
    names = ("tokens", "hidden", "intermediate", "num_experts", "topk", "tp", "ep")
    for j, c in enumerate(names):
        cols[c] = np.array([r[j] for r in rows], dtype=float)
    t = predict_table(hw_true, cols)
    cols["latency_s"] = t * np.exp(0.01 * np.random.default_rng(0).standard_normal(t.size))
    res = fit_efficiency(load_hardware("h100-sxm"), cols, FitConfig(steps=1000, families=("moe",)))
    got = _values(res)
    for key, true in TRUTH_MOE.items():
        p = got[key]
        if key in (("moe", "assign_s"), ("moe", "permute_passes")):
            # small additive terms (< 5% of any row): recovered within their uncertainty
            assert abs(p.value - true) < 3 * p.std + 0.05 * true, key
        else:
            assert p.value == pytest.approx(true, rel=0.02), key
    # no weight-only rows: that kernel path cannot be seen
    assert "moe.wo_compute_eff" in res.unconstrained
    assert res.train_errors[0]["median_abs_rel_err"] < 0.015


# Block-scaled GEMM terms, all neutral (0 or 1) in the blackwell hand profile, and a faster
# fp4 main loop (0.296 there), so that the fp4 k-pace floor binds at small m as on B200
# (at 0.296 a padded tile's compute already takes 1.8 ns per k).
TRUTH_BLOCK = {
    ("gemm", "compute_eff_fp4"): 0.45,
    ("gemm", "group_quant_passes"): 1.2,
    ("gemm", "block_tile_k_s"): 1.2e-9,
    ("gemm", "fp4_tile_k_s"): 1.9e-9,
    ("gemm", "unaligned_row_k_s"): 1.0e-11,
    ("gemm", "scaled_wave_tail_share"): 0.5,
}


def test_recovers_block_scaled_gemm_terms():
    """fp8_block and nvfp4 GEMMs (six (n, k) shapes, m = 1 .. 16384 with unaligned m) on a
    B200 whose block-scaled terms are TRUTH_BLOCK, 1% noise, fitted from the blackwell hand
    profile (where all five are off): the activation-quantisation pass is told apart from
    the memory leg by its m·k (not k·n) bytes, the k-pace floors by the small-m rows of each
    k, the padding time by the unaligned m, the partial-wave share by tile counts between
    whole waves of 148 slots."""
    hw0 = load_hardware("b200-sxm")
    hw_true = with_efficiency(hw0, TRUTH_BLOCK)
    ms = (1, 16, 64, 96, 129, 200, 256, 300, 640, 1000, 1024, 2048, 2100, 4096, 16384)
    rows = [
        (dt, m, n, k)
        for dt in ("fp8_block", "nvfp4")
        for n, k in (
            (1536, 7168),
            (2048, 2048),
            (4096, 4096),
            (5120, 16384),
            (8192, 1024),
            (24576, 1536),
        )
        for m in ms
    ]
    cols = {
        "device": np.array(["synthetic"] * len(rows)),
        "op": np.array(["gemm"] * len(rows)),
        "dtype": np.array([r[0] for r in rows]),
        "m": np.array([r[1] for r in rows], dtype=float),
        "n": np.array([r[2] for r in rows], dtype=float),
        "k": np.array([r[3] for r in rows], dtype=float),
    }
    t = predict_table(hw_true, cols)
    cols["latency_s"] = t * np.exp(0.01 * np.random.default_rng(1).standard_normal(t.size))
    res = fit_efficiency(hw0, cols, FitConfig(steps=1000, families=("gemm",)))
    got = _values(res)
    for key, true in TRUTH_BLOCK.items():
        p = got[key]
        if key[1] != "compute_eff_fp4":
            assert p.prior in (0.0, 1.0), key  # neutral in the hand profile
        assert abs(p.value - true) < 3 * p.std + 0.05 * true, (key, p.value, p.std)
    assert res.train_errors[0]["median_abs_rel_err"] < 0.015


TRUTH_MLA = {
    ("attention", "mla_module_launch_overlap"): 0.4,
    ("attention", "mla_module_fixed_s"): 3.0e-6,
    ("attention", "mla_module_row_s"): 2.0e-8,
}


def test_recovers_mla_block_launch_overlap():
    """DeepSeek-V3 MLA decode and prefill, single kernels and whole blocks (fp8_block
    projections, bf16 and fp8 KV, 1-128 heads, batch 1-512), measured on the TRUTH_MLA device
    with 1% noise: the share of the kernels' standalone fixed times a block hides is told
    apart from the block's own fixed time because a decode block hides six GEMMs' fixed times
    (four projections, two BMMs) and a prefill block five, while ``mla_module_fixed_s`` is the
    same in both; the per-token term is separated by the batch and length sweeps. The kernel
    rows pin the MLA kernels' own parameters."""
    hw_true = with_efficiency(load_hardware("h100-sxm"), TRUTH_MLA)
    rows = []
    for scope in ("kernel", "module"):
        for kv in ("bf16", "fp8"):
            for h in (1.0, 16.0, 128.0):
                for b in (1.0, 4.0, 32.0, 128.0, 512.0):
                    for ctx in (257.0, 4097.0, 32769.0):
                        rows.append(("mla_decode", scope, kv, h, b, 1.0, ctx))
                for s_len in (16.0, 64.0, 512.0):
                    rows.append(("mla_prefill", scope, kv, h, 1.0, s_len, s_len))
    n = len(rows)
    cols = {
        "device": np.array(["synthetic"] * n),
        "op": np.array([r[0] for r in rows]),
        "scope": np.array([r[1] for r in rows]),
        "model": np.array(["deepseek-v3"] * n),
        "dtype": np.array(["bf16"] * n),
        "kv_dtype": np.array([r[2] for r in rows]),
        "gemm_dtype": np.array(["fp8_block" if r[1] == "module" else "" for r in rows]),
        "num_heads": np.array([r[3] for r in rows], dtype=float),
        "batch": np.array([r[4] for r in rows], dtype=float),
        "seq_len": np.array([r[5] for r in rows], dtype=float),
        "kv_len": np.array([r[6] for r in rows], dtype=float),
    }
    t = predict_table(hw_true, cols)
    cols["latency_s"] = t * np.exp(0.01 * np.random.default_rng(0).standard_normal(t.size))
    cfg = FitConfig(steps=1000, families=("attention",))
    res = fit_efficiency(load_hardware("h100-sxm"), cols, cfg)
    got = _values(res)
    # the prior has no overlap (0): the fit switches it on from START_IF_ABSENT
    assert got[("attention", "mla_module_launch_overlap")].prior == 0.0
    for key, true in TRUTH_MLA.items():
        p = got[key]
        assert abs(p.value - true) < max(3 * p.std, 0.1 * true), (key, p.value, p.std)
    assert res.train_errors[0]["median_abs_rel_err"] < 0.015


def test_robust_to_outliers():
    """8% of the rows 4x too slow: the pseudo-Huber fit stays near the truth; a least-squares
    fit (delta far above every residual) is dragged towards the outliers."""
    cols = _synthetic_table(noise=0.01, seed=2, outliers=0.08)
    hw = load_hardware("h100-sxm")
    robust = _values(fit_efficiency(hw, cols, FitConfig(steps=1000)))
    lsq = _values(fit_efficiency(hw, cols, FitConfig(steps=1000, delta=100.0)))

    def err(vals, key):
        return abs(vals[key].value / TRUTH[key] - 1)

    # k_half, the memory ramp and the quantisation kernels' fixed cost are each seen by few
    # rows (long-k compute-bound GEMMs; small transfers; small fp8 GEMMs), so outliers among
    # those move them more (this draw: mem_half_bytes +8%, least squares +168%)
    tol = {"k_half_elems": 0.25, "quant_launch_s": 0.10, "mem_half_bytes": 0.10}
    for key in TRUTH:
        assert err(robust, key) < tol.get(key[1], 0.06), key
    assert sum(err(robust, k) for k in TRUTH) < 0.5 * sum(err(lsq, k) for k in TRUTH)


def test_parameters_stay_physical():
    """Measurements 3x faster than the peaks allow: fractions saturate below 1, never above."""
    cols = _synthetic_table(noise=0.0)
    cols["latency_s"] = cols["latency_s"] / 3.0
    res = fit_efficiency(load_hardware("h100-sxm"), cols, FitConfig(steps=300))
    for p in res.params:
        assert np.isfinite(p.value) and p.value > 0, p.name
        if p.transform == "unit":
            assert p.value <= 1.0, p.name
    assert all_finite(res.loss_history)


def test_transforms_roundtrip_and_bounds():
    for v, t in ((0.3, "unit"), (2.5e-6, "pos"), (1.7, "ge1")):
        th = _to_theta(v, t)
        assert float(_from_theta(jnp.asarray([th]), (t,))[0]) == pytest.approx(v, rel=1e-9)
    # extreme θ: still in range, finite gradient
    x = _from_theta(jnp.asarray([80.0, -80.0, 30.0]), ("unit", "unit", "ge1"))
    assert 0 < float(x[1]) and float(x[0]) <= 1 and float(x[2]) > 1
    g = jax.grad(lambda th: jnp.sum(_from_theta(th, ("unit", "pos", "ge1"))))(
        jnp.asarray([80.0, -30.0, 5.0])
    )
    assert all_finite(g)


def test_pseudo_huber_derivatives():
    # psi = rho', psi' = rho'' (used by the sandwich) against autodiff
    for r in (-0.7, -0.01, 0.0, 0.03, 1.5):
        d = 0.05
        g = jax.grad(lambda x: _pseudo_huber(x, d))(r)
        h = jax.grad(jax.grad(lambda x: _pseudo_huber(x, d)))(r)
        psi, dpsi = _psi(np.asarray(r), d)
        assert float(psi) == pytest.approx(float(g), rel=1e-9, abs=1e-15)
        assert float(dpsi) == pytest.approx(float(h), rel=1e-9)
    # quadratic for small r: rho(0.001) ~ 0.001^2 / 2; linear for large r: ~ delta*|r|
    assert float(_pseudo_huber(1e-3, 0.05)) == pytest.approx(0.5e-6, rel=1e-3)
    assert float(_pseudo_huber(5.0, 0.05)) == pytest.approx(0.05 * 5.0 - 0.05**2, rel=1e-3)


def test_memcpy_golden():
    hw = load_hardware("h100-sxm")
    # 1 GB copy moves 2e9 bytes: t = (2e9 + B_half) / (bw · mem_eff) + launch
    # = (2e9 + 9.27e6) / (3.35e12 · 0.832) + 2.2e-6 = 2.00927e9 / 2.7872e12 + 2.2e-6
    # = 7.208920e-4 + 2.2e-6 = 7.230920e-4 s (hopper profile, h100 datasheet bandwidth)
    assert float(memcpy_time_s(hw, 1e9)) == pytest.approx(7.230920e-4, rel=1e-5)
    g = jax.grad(lambda b: memcpy_time_s(hw, b))(0.0)
    assert np.isfinite(float(g))


def test_holdout_split_by_shape_group():
    cols = _synthetic_table(noise=0.0)
    gid = shape_groups(cols)
    # GEMM groups are (dtype, n, k): 2 x 6; memcpy rows are one group
    assert len(np.unique(gid[cols["op"] == "gemm"])) == 12
    assert len(np.unique(gid[cols["op"] == "memcpy"])) == 1
    train = holdout_split(cols, 0.4, seed=3)
    for g in np.unique(gid):
        assert len(np.unique(train[gid == g])) == 1  # a group is never split
    # 0.4 of the 6 groups per (op, dtype) = round(2.4) = 2 held out each; the single memcpy
    # group stays
    for dt in ("bf16", "fp8"):
        sel = (cols["op"] == "gemm") & (cols["dtype"] == dt)
        assert len(np.unique(gid[sel & ~train])) == 2
    assert train[cols["op"] == "memcpy"].all()
    assert (holdout_split(cols, 0.4, seed=3) == train).all()
    assert any(not (holdout_split(cols, 0.4, seed=s) == train).all() for s in range(4, 9))
    assert holdout_split(cols, 0.0).all()
    # a stratum's held-out shapes do not depend on the other tables fitted with it: the fp8
    # rows hold out the same groups with and without the bf16 and memcpy rows, and with a
    # table that brings in an implementation column (blank in the GEMM rows)
    fp8 = (cols["op"] == "gemm") & (cols["dtype"] == "fp8")
    alone = {k: v[fp8] for k, v in cols.items()}
    coll = {
        "device": np.array(["synthetic"] * 4),
        "op": np.array(["all_reduce"] * 4),
        "dtype": np.array(["bf16"] * 4),
        "implementation": np.array(["nccl", "nccl", "custom", "custom"]),
        "num_devices": np.array([2.0, 4.0, 2.0, 4.0]),
        "bytes": np.full(4, 1e6),
    }
    both = concat_tables([alone, coll])
    for s in range(6):
        mask = holdout_split(alone, 0.4, seed=s)
        assert (mask == holdout_split(cols, 0.4, seed=s)[fp8]).all()
        split = holdout_split(both, 0.4, seed=s)
        assert (mask == split[: fp8.sum()]).all()
        # each implementation is its own stratum: one of its two groups (one row each) is
        # held out, the other trains
        for impl in ("nccl", "custom"):
            assert split[fp8.sum() :][coll["implementation"] == impl].sum() == 1


def test_holdout_errors_reported(clean_fit):
    cols, _ = clean_fit
    res = fit_efficiency(load_hardware("h100-sxm"), cols, FitConfig(steps=300, holdout=0.4))
    assert (~res.train_mask).sum() > 0
    # the model is exact up to 1% noise, so unseen shapes are predicted as well as seen ones
    for r in res.holdout_errors:
        assert r["median_abs_rel_err"] < 0.03


def test_bootstrap_spread(clean_fit):
    cols, _ = clean_fit
    res = fit_efficiency(
        load_hardware("h100-sxm"), cols, FitConfig(steps=150, bootstrap=3, families=("gemm",))
    )
    for p in res.params:
        assert p.bootstrap_std is not None and np.isfinite(p.bootstrap_std)


def test_preset_roundtrip(clean_fit, tmp_path):
    cols, res = clean_fit
    path = tmp_path / "fitted.toml"
    path.write_text(preset_toml(res, "h100-sxm", "fitted", ["test"]))
    hw = load_hardware(path)
    assert hw.name == "fitted"
    np.testing.assert_allclose(predict_table(hw, cols), predict_table(res.hw, cols), rtol=1e-6)
    # untouched families and peaks come from the inherited preset
    base = load_hardware("h100-sxm")
    assert float(hw.accel.eff.attention.decode_mem_eff) == float(
        base.accel.eff.attention.decode_mem_eff
    )
    assert float(hw.accel.peak_bf16_flop_per_s) == float(base.accel.peak_bf16_flop_per_s)


def test_fit_errors():
    cols = _synthetic_table(noise=0.0)
    with pytest.raises(CalibrationError, match="attention"):
        fit_efficiency(load_hardware("h100-sxm"), cols, FitConfig(families=("attention",)))
    with pytest.raises(CalibrationError, match="holdout"):
        FitConfig(holdout=1.0)
    with pytest.raises(CalibrationError, match="nonsense"):
        FitConfig(families=("nonsense",))
    two = {k: np.concatenate([v, v]) for k, v in cols.items()}
    two["device"] = np.array(["a"] * len(cols["op"]) + ["b"] * len(cols["op"]))
    with pytest.raises(CalibrationError, match="--device"):
        rows_for_device(two, "h100-sxm")
    sub, dev = rows_for_device(two, "h100-sxm", "b")
    assert dev == "b" and len(sub["op"]) == len(cols["op"])


def _write(tmp_path, cols, name="synthetic.csv"):
    p = tmp_path / name
    lat = cols["latency_s"]
    write_csv(p, {k: v for k, v in cols.items() if k != "latency_s"}, {"latency_s": lat})
    return p


def test_cli_calibrate_then_use_everywhere(clean_fit, tmp_path, capsys):
    cols, _ = clean_fit
    csv_path = _write(tmp_path, cols)
    out = tmp_path / "my.toml"
    rc = main(
        [
            "calibrate",
            "--hardware",
            "h100-sxm",
            "--input",
            str(csv_path),
            "--output",
            str(out),
            "--holdout",
            "0.2",
            "--steps",
            "300",
            "--json",
        ]
    )
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["rows_holdout"] > 0 and rep["holdout"]["worst_group_median_abs_rel_err"] < 0.03
    names = {p["name"]: p for p in rep["params"]}
    assert names["compute_eff_bf16"]["value"] == pytest.approx(0.70, rel=0.05)
    # the written preset works as --hardware in other commands
    assert main(["validate", "--hardware", str(out), "--input", str(csv_path), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert max(g["median_abs_rel_err"] for g in groups) < 0.03
    rc = main(["estimate", "--hardware", str(out), "--model", "llama-3.1-8b", "--json"])
    assert rc == 0
    capsys.readouterr()
    # human-readable output names train and held-out columns
    assert (
        main(
            [
                "calibrate",
                "--hardware",
                "h100-sxm",
                "--input",
                str(csv_path),
                "--output",
                str(out),
                "--steps",
                "50",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "held |err|" in text and "compute_eff_bf16" in text


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda L: L.__setitem__(3, L[3].rsplit(",", 1)[0] + ",-1e-05"), r"synthetic\.csv:4: "),
        (lambda L: L.__setitem__(0, L[0].replace(",k,", ",kk,")), r"needs column 'k'"),
        (lambda L: L.__setitem__(5, L[5].replace(",bf16,", ",bf16,x")), r"synthetic\.csv:6"),
    ],
    ids=["negative-latency", "missing-column", "bad-number"],
)
def test_cli_corrupted_rows_name_file_and_line(clean_fit, tmp_path, capsys, edit, match):
    cols, _ = clean_fit
    p = _write(tmp_path, cols)
    lines = p.read_text().splitlines()
    edit(lines)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(TableError, match=match):
        read_kernel_csv(p)
    rc = main(
        [
            "calibrate",
            "--hardware",
            "h100-sxm",
            "--input",
            str(p),
            "--output",
            str(tmp_path / "x.toml"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("diffperf: error: ") and "synthetic.csv" in err


def test_cli_bad_hardware_and_device(clean_fit, tmp_path, capsys):
    cols, _ = clean_fit
    p = _write(tmp_path, cols)
    assert (
        main(
            [
                "calibrate",
                "--hardware",
                "nope-9000",
                "--input",
                str(p),
                "--output",
                str(tmp_path / "x.toml"),
            ]
        )
        == 2
    )
    assert "nope-9000" in capsys.readouterr().err
    assert (
        main(
            [
                "calibrate",
                "--hardware",
                "h100-sxm",
                "--device",
                "zzz",
                "--input",
                str(p),
                "--output",
                str(tmp_path / "x.toml"),
            ]
        )
        == 2
    )
    assert "zzz" in capsys.readouterr().err
