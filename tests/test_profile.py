"""Profiling the local JAX device, and profile -> calibrate -> predict on this machine."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.calibrate import error_table, predict_table, read_kernel_csv, select_rows
from diffperf.calibrate._fit import FitConfig, fit_efficiency
from diffperf.calibrate._profile import PROFILE_OPS, profile_device, profile_plan, time_kernel
from diffperf.cli import main
from diffperf.hardware import load_hardware


# GEMMs large enough to time reliably on a shared 2-core machine (>= ~50 us) and at most
# 3e8 FLOP (~3 ms): larger ones switch to multi-threaded kernels that a loaded machine slows
# by 3x or more at random; six (n, k) shape groups so a held-out split has unseen shapes.
E2E_PLAN = {
    "gemm_dtypes": ("fp32",),
    "gemm_nk": ((512, 1024), (1024, 1024), (1024, 512), (2048, 512), (512, 2048), (1024, 2048)),
    "gemm_m": (1, 8, 16, 64, 128, 256),
    "gemm_max_flop": 3e8,
    "attn_dtypes": ("fp32",),
    "prefill": (),
    "prefill_seq": (),
    "decode": (),
    "decode_kv": (),
    "memcpy_bytes": tuple(1 << p for p in range(20, 27, 2)),
    "repeats": 5,
    "budget_s": 0.04,
    "passes": 2,
}

TINY_PLAN = {
    "gemm_dtypes": ("fp32", "bf16"),
    "gemm_nk": ((64, 64),),
    "gemm_m": (1, 32),
    "gemm_max_flop": 1e9,
    "attn_dtypes": ("fp32",),
    "prefill": ((1, 4, 2, 16),),
    "prefill_seq": (32,),
    "decode": ((2, 4, 1, 16),),
    "decode_kv": (64,),
    "memcpy_bytes": (1 << 16,),
    "repeats": 3,
    "budget_s": 0.01,
}


def test_time_kernel_median_positive():
    f = lambda x: x * 2.0
    import jax

    t = time_kernel(jax.jit(f), (jnp.ones(1000),), repeats=5, budget_s=0.01)
    assert 0 < t < 1.0


def test_profile_writes_schema_rows_and_provenance(tmp_path):
    out = tmp_path / "p.csv"
    res = profile_device(out, plan=TINY_PLAN, device_name="testcpu")
    # 2 dtypes x 2 m + 1 prefill + 1 decode + 1 memcpy
    assert res["rows"] == 7
    cols = read_kernel_csv(out)  # the strict reader accepts every row
    assert set(cols["op"]) == set(PROFILE_OPS)
    assert (cols["device"] == "testcpu").all() and (cols["latency_s"] > 0).all()
    prov = json.loads((tmp_path / "p.csv.json").read_text())
    for key in ("platform", "device_kind", "jax_version", "jaxlib_version", "cpu_model"):
        assert prov[key]
    # every measured row is predictable by the kernel models (finite, positive)
    pred = predict_table(load_hardware("epyc-genoa-2vcpu"), cols)
    assert np.isfinite(pred).all() and (pred > 0).all()


def test_quick_plan_is_bounded():
    """--quick stays small: a bounded number of kernels, none above its FLOP cap."""
    plan = profile_plan(True, "cpu")
    n_gemm = sum(
        1
        for n, k in plan["gemm_nk"]
        for m in plan["gemm_m"]
        if 2.0 * m * n * k <= plan["gemm_max_flop"]
    ) * len(plan["gemm_dtypes"])
    n_attn = len(plan["prefill"]) * len(plan["prefill_seq"]) + len(plan["decode"]) * len(
        plan["decode_kv"]
    )
    assert n_gemm + n_attn + len(plan["memcpy_bytes"]) <= 50
    assert plan["repeats"] <= 9 and plan["budget_s"] <= 0.2


def test_profile_cli_errors(tmp_path, capsys):
    assert main(["profile", "--output", str(tmp_path / "x.csv"), "--ops", "gemm,fft"]) == 2
    assert "fft" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fresh_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("prof") / "local.csv"
    profile_device(out, plan=E2E_PLAN, device_name="local", ops=("gemm",))
    return read_kernel_csv(out)


def test_profile_calibrate_predict_end_to_end(fresh_profile):
    """Calibrate the CI CPU preset on 4 of 6 GEMM shape groups of a profile taken now; the 2
    unseen (n, k) groups are predicted within 25% median |error|.

    The bar is set by how much live CPU timings move, not by the fit: six back-to-back runs
    of this check on the idle 2-vCPU dev machine gave held-out medians 0.03-0.16 (small-m
    GEMMs move +-20-35% from run to run as XLA:CPU picks different GEMV/packing paths), and
    one CI machine gave 0.18. A broken fit is far outside it: the uncalibrated preset is
    0.74 off on the idle dev machine, and a fit that got the compute or memory roof wrong by
    a factor 1.5 is >= 0.33 off on the m >= 64 rows. The training rows must fit too."""
    cols = fresh_profile
    hw = load_hardware("epyc-genoa-2vcpu")
    res = fit_efficiency(hw, cols, FitConfig(steps=300, holdout=0.34, seed=0))
    held = ~res.train_mask
    assert held.sum() >= 10 and (cols["op"][held] == "gemm").all()
    pred = predict_table(res.hw, select_rows(cols, held))
    (row,) = error_table(select_rows(cols, held), pred)
    assert row["median_abs_rel_err"] < 0.25, row
    train = select_rows(cols, res.train_mask)
    (train_row,) = error_table(train, predict_table(res.hw, train))
    assert train_row["median_abs_rel_err"] < 0.25, train_row
    for p in res.params:
        if p.transform == "unit":
            assert 0 < p.value <= 1


@pytest.mark.slow
def test_shipped_cpu_preset_predicts_fresh_profile(fresh_profile):
    """The shipped preset (calibrated earlier on this machine) predicts a fresh profile
    within a loose bar: a shared machine's load changes absolute speed by tens of %.

    Not in CI: CI may run on another CPU model, and the preset was calibrated while the
    machine was shared (load 6-15); on an idle machine gemm fp32 came out 74% faster than it
    predicts. The end-to-end check above (calibrate on this run's own rows) is the CI one."""
    cols = fresh_profile
    pred = predict_table(load_hardware("epyc-genoa-2vcpu"), cols)
    for row in error_table(cols, pred):
        assert row["median_abs_rel_err"] < 0.6, row
