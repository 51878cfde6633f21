"""Profiling the local JAX device, and profile -> calibrate -> predict on this machine."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.calibrate import error_table, predict_table, read_kernel_csv, select_rows
from diffperf.calibrate._fit import FitConfig, fit_efficiency
from diffperf.calibrate._profile import (
    PROFILE_OPS,
    profile_device,
    profile_plan,
    time_kernel,
)
from diffperf.cli import main
from diffperf.hardware import load_hardware


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


def test_profile_stops_at_max_seconds(tmp_path, capsys):
    """--max-seconds: the first kernel is always measured, then no new one once the time is
    up; the rows written are those measured, and the provenance says how many of the plan."""
    out = tmp_path / "p.csv"
    res = profile_device(out, plan=TINY_PLAN, device_name="testcpu", max_seconds=1e-9)
    assert res["rows"] == 1
    assert res["provenance"]["kernels_planned"] == 7
    assert res["provenance"]["kernels_measured"] == 1
    assert res["provenance"]["stopped_at_max_seconds"] == 1e-9
    cols = read_kernel_csv(out)
    assert len(cols["op"]) == 1 and (cols["latency_s"] > 0).all()
    # a budget the plan fits in measures everything and records no stop
    res = profile_device(out, plan=TINY_PLAN, device_name="testcpu", max_seconds=600.0)
    assert res["rows"] == 7 and res["provenance"]["stopped_at_max_seconds"] is None
    # the flag is checked at the edge, naming itself and the value
    with pytest.raises(SystemExit):
        main(["profile", "--output", str(out), "--max-seconds", "-3"])
    assert "--max-seconds = -3 must be a finite positive number" in capsys.readouterr().err


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


_PROFILE_CHILD = (
    "import sys\n"
    "from diffperf.calibrate._profile import CPU_HOLDOUT_PLAN, profile_device\n"
    "profile_device(sys.argv[1], plan=CPU_HOLDOUT_PLAN, device_name='local', ops=('gemm',))\n"
)


@pytest.fixture(scope="module")
def fresh_profile(tmp_path_factory):
    """A live GEMM profile of this machine, taken in a child process with the caller's own
    XLA flags: the suite's fast-compile flags (conftest) would time unoptimised kernels."""
    out = tmp_path_factory.mktemp("prof") / "local.csv"
    flags = os.environ.get("DIFFPERF_TESTS_CALLER_XLA_FLAGS", "")
    proc = subprocess.run(
        [sys.executable, "-c", _PROFILE_CHILD, str(out)],
        env=dict(os.environ, XLA_FLAGS=flags),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return read_kernel_csv(out)


@pytest.fixture(scope="module")
def live_fit(fresh_profile):
    hw = load_hardware("epyc-genoa-2vcpu")
    return fit_efficiency(hw, fresh_profile, FitConfig(steps=300, holdout=0.34, seed=0))


def _holdout_error(cols, fitted_hw, held) -> float:
    pred = predict_table(fitted_hw, select_rows(cols, held))
    (row,) = error_table(select_rows(cols, held), pred)
    return row["median_abs_rel_err"]


def test_profile_calibrate_predict_end_to_end(fresh_profile, live_fit):
    """Profile this machine now, calibrate the CPU preset on 4 of 6 GEMM shape groups, and
    predict the 2 unseen groups: the whole chain runs on live rows and is not grossly off.

    What CI can assert on live timings is bounded by how much they move, which depends on the
    machine CI happens to get: on the idle 2-vCPU dev machine the held-out median |error| was
    0.03-0.16 over six runs, and two CI machines gave 0.18 and 0.32 (small-m GEMMs move
    +-20-35% from run to run as XLA:CPU picks different GEMV/packing paths). So this test
    asserts what holds whatever the noise: the fit lowers its own loss, the fitted parameters
    stay physical, and unseen shapes are predicted within 50% (a units or FLOP-count slip, or
    a sign error in the gradient, is a factor 2 or more off). The accuracy of the fit itself
    is asserted on synthetic rows with known truth and noise (tests/test_calibrate.py); the
    live figure is measured by ``benchmarks/bench_calibrate.py --live-holdout`` and asserted
    by the slow test below."""
    cols = fresh_profile
    res = live_fit
    held = ~res.train_mask
    assert held.sum() >= 10 and (cols["op"][held] == "gemm").all()
    assert res.loss_history[-1] < res.loss_history[0], res.loss_history[[0, -1]]
    err = _holdout_error(cols, res.hw, held)
    assert np.isfinite(err) and err < 0.5, err
    for p in res.params:
        if p.transform == "unit":
            assert 0 < p.value <= 1


@pytest.mark.slow
def test_profile_holdout_accuracy_on_idle_machine(fresh_profile, live_fit):
    """On an idle machine the 2 unseen GEMM shape groups are predicted within 25% median
        |error| (six runs on the idle dev machine: 0.03-0.16; a fit with the compute or memory
        roof 1.5x off is >= 0.33 off on the m >= 64 rows). With the preset re-fitted on an idle
    profile (2026-11-28), ``bench_calibrate.py --live-holdout 4`` gave 0.08-0.12 (the preset
    itself, uncalibrated: 0.07-0.18).
        Not in CI: a busy or different CI machine gave 0.32 once (see the test above)."""
    cols = fresh_profile
    res = live_fit
    assert _holdout_error(cols, res.hw, ~res.train_mask) < 0.25
    train = select_rows(cols, res.train_mask)
    (train_row,) = error_table(train, predict_table(res.hw, train))
    assert train_row["median_abs_rel_err"] < 0.25, train_row


@pytest.mark.slow
def test_shipped_cpu_preset_predicts_fresh_profile(fresh_profile):
    """The shipped preset (calibrated on an idle profile of this machine) predicts a fresh
    profile within 30% median |error| per op (measured 0.07-0.18 on the idle dev machine).

    Not in CI: CI may run on another CPU model or a busy host (an earlier profile under load
    average 5-10 had kernels 1-8x slower). The end-to-end check above (calibrate on this
    run's own rows) is the CI one."""
    cols = fresh_profile
    pred = predict_table(load_hardware("epyc-genoa-2vcpu"), cols)
    for row in error_table(cols, pred):
        assert row["median_abs_rel_err"] < 0.3, row
