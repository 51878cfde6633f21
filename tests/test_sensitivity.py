"""Elasticities (one gradient) against finite differences and hand-derived physics; sweeps."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.deploy import Workload
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.search._sensitivity import (
    Point,
    SensitivityError,
    StaticBatch,
    elasticities,
    named_leaves,
    point_metrics,
    resolve_name,
    set_values,
    sweep_1d,
    sweep_2d,
)
from diffperf.stages import make_plan


@pytest.fixture(scope="module")
def setup():
    hw = load_hardware("h100-sxm")
    model = load_model("llama-3.1-8b")
    deploy = StaticBatch(make_plan(model), batch=1.0)
    w = Workload(isl_tokens=1024.0, osl_tokens=128.0, name="custom")  # as the CLI builds it
    return hw, model, deploy, w


@pytest.fixture(scope="module")
def tpot_el(setup):
    return elasticities(*setup, metric="tpot_s")


@pytest.fixture(scope="module")
def metric_fn():
    return eqx.filter_jit(lambda p: point_metrics(p))


def _is_time(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return not leaf.endswith("_per_s") and (leaf.endswith("_s") or "_s_" in leaf)


def test_elasticities_match_central_differences(setup, tpot_el, metric_fn):
    # e = d log y / d log x; central difference in log x with h = 1e-4 (smooth leaves only:
    # the tile staircases are straight-through, so leaves that move them are not checked)
    point = Point(setup[0], setup[2], setup[3], setup[1])
    el = dict(zip(tpot_el.names, tpot_el.elasticities))
    vals = named_leaves(point)
    h = 1e-4
    for name in (
        "hardware.accel.hbm.bw_bytes_per_s",
        "hardware.accel.eff.gemm.mem_eff",
        "hardware.accel.eff.gemm.launch_s",
        "hardware.accel.eff.attention.decode_mem_eff",
        "workload.isl_tokens",
    ):
        x = float(vals[name])
        up = float(metric_fn(set_values(point, {name: x * np.exp(h)})).tpot_s)
        dn = float(metric_fn(set_values(point, {name: x * np.exp(-h)})).tpot_s)
        fd = (np.log(up) - np.log(dn)) / (2 * h)
        assert el[name] == pytest.approx(fd, rel=1e-4, abs=1e-7), name


def test_memory_bound_decode_bandwidth_elasticity(setup, tpot_el, metric_fn):
    # Batch-1 decode of an 8B model on H100 is memory bound: every kernel costs
    # t_k = bytes_k (1 + half_k / bytes_k) / (bw · eta_k) + launch_k (the transfer-size
    # saturation depends on bytes, not on bw), so TPOT = T_mem / bw-scaled + T_launch and
    # d log TPOT / d log bw = -T_mem / TPOT = -(1 - launch share). T_mem is TPOT with every
    # time parameter (launch, latency, per-CTA seconds) set to 0.
    point = Point(setup[0], setup[2], setup[3], setup[1])
    zero_times = {n: 0.0 for n in named_leaves(point) if n.startswith("hardware.") and _is_time(n)}
    t_mem = float(metric_fn(set_values(point, zero_times)).tpot_s)
    el = dict(zip(tpot_el.names, tpot_el.elasticities))
    assert el["hardware.accel.hbm.bw_bytes_per_s"] == pytest.approx(
        -t_mem / tpot_el.metric_value, rel=1e-6
    )
    assert -0.97 < el["hardware.accel.hbm.bw_bytes_per_s"] < -0.8  # launch share 3-20 %
    # bandwidth enters only as bw · eta: its elasticity equals the sum of the memory
    # efficiencies' elasticities (GEMM/elementwise traffic and the attention KV read)
    assert el["hardware.accel.hbm.bw_bytes_per_s"] == pytest.approx(
        el["hardware.accel.eff.gemm.mem_eff"] + el["hardware.accel.eff.attention.decode_mem_eff"],
        rel=1e-6,
    )
    # batch 1: compute peaks do not matter
    assert abs(tpot_el.resources["flops"]) < 1e-4


@pytest.mark.parametrize("metric", ["tpot_s", pytest.param("ttft_s", marks=pytest.mark.slow)])
def test_euler_homogeneity_of_time(setup, tpot_el, metric):
    # Scaling every rate (FLOP/s, bytes/s) by s and every time parameter by 1/s divides every
    # kernel and transfer time by s (efficiencies and byte/element sizes are unit-free or
    # bytes), so the latency is homogeneous of degree -1 and by Euler's theorem
    # sum(e_rate) - sum(e_time) = -1.
    s = tpot_el if metric == "tpot_s" else elasticities(*setup, metric=metric)
    rates = sum(e for n, e in zip(s.names, s.elasticities) if n.endswith("_per_s"))
    times = sum(
        e for n, e in zip(s.names, s.elasticities) if n.startswith("hardware.") and _is_time(n)
    )
    assert rates - times == pytest.approx(-1.0, abs=1e-9)


def test_elasticities_finite_and_zero_for_zero_leaves(tpot_el):
    assert np.all(np.isfinite(tpot_el.elasticities))
    el = dict(zip(tpot_el.names, tpot_el.elasticities))
    assert el["hardware.accel.peak_fp4_flop_per_s"] == 0.0  # H100 has no FP4 peak (x = 0)
    assert el["hardware.accel.hbm.capacity_bytes"] == 0.0  # capacity does not change time
    d = tpot_el.to_dict(5)
    assert len(d["elasticities"]) == 5 and d["metric"] == "tpot_s"


def test_sweep_1d_matches_pointwise_and_is_monotone(setup, metric_fn):
    hw, model, deploy, w = setup
    point = Point(hw, deploy, w, model)
    xs = [0.5, 1.0, 2.0]
    r = sweep_1d(hw, model, deploy, w, "scale.hbm_bw", xs, ("tpot_s",))
    for x, y in zip(xs, r["tpot_s"]):
        assert y == pytest.approx(
            float(metric_fn(set_values(point, {"scale.hbm_bw": x})).tpot_s), rel=1e-12
        )
    assert np.all(np.diff(r["tpot_s"]) < 0)  # more bandwidth, shorter decode step
    r2 = sweep_2d(hw, model, deploy, w, "scale.hbm_bw", xs, "workload.isl_tokens", [512, 1024])
    assert r2["tpot_s"].shape == (2, 3)
    np.testing.assert_allclose(r2["tpot_s"][1], r["tpot_s"], rtol=1e-12)


def test_names_and_errors(setup):
    hw, model, deploy, w = setup
    point = Point(hw, deploy, w, model)
    assert resolve_name(point, "deployment.tp") == "deployment.plan.tp"
    assert resolve_name(point, "workload.tpot") == "workload.slo.tpot_s"
    with pytest.raises(SensitivityError, match="hardware.accel.hbm.bandwidth"):
        resolve_name(point, "hardware.accel.hbm.bandwidth")
    with pytest.raises(SensitivityError, match="scale.hbm"):
        resolve_name(point, "scale.hbm")
    with pytest.raises(SensitivityError, match="must start with"):
        resolve_name(point, "gpu.bw")
    with pytest.raises(SensitivityError, match="'latency'"):
        elasticities(hw, model, deploy, w, metric="latency")
    with pytest.raises(SensitivityError, match="wrt"):
        elasticities(hw, model, deploy, w, wrt=("hw",))
    with pytest.raises(SensitivityError, match="two different"):
        sweep_2d(hw, model, deploy, w, "scale.flops", [1.0], "scale.flops", [1.0])
    p2 = set_values(point, {"scale.flops": 2.0})
    assert float(p2.hardware.accel.peak_bf16_flop_per_s) == pytest.approx(
        2 * float(hw.accel.peak_bf16_flop_per_s)
    )
    assert float(p2.hardware.accel.hbm.bw_bytes_per_s) == float(hw.accel.hbm.bw_bytes_per_s)


@pytest.mark.slow
def test_aggregated_elasticities_match_central_differences():
    from diffperf.deploy import Aggregated, load_workload

    hw = load_hardware("h100-sxm")
    model = load_model("llama-3.1-8b")
    dep = Aggregated(plan=make_plan(model), max_batch=64.0)
    w = load_workload("chat", concurrency=16)
    s = elasticities(hw, model, dep, w, "tpot_s", wrt=("hardware", "workload", "deployment"))
    point = Point(hw, dep, w, model)
    f = eqx.filter_jit(lambda p: point_metrics(p).tpot_s)
    el = dict(zip(s.names, s.elasticities))
    vals = named_leaves(point)
    h = 1e-4
    for name in ("hardware.accel.hbm.bw_bytes_per_s", "workload.concurrency"):
        x = float(vals[name])
        fd = (
            jnp.log(f(set_values(point, {name: x * np.exp(h)})))
            - jnp.log(f(set_values(point, {name: x * np.exp(-h)})))
        ) / (2 * h)
        assert el[name] == pytest.approx(float(fd), rel=2e-3, abs=1e-5), name


def test_cli_sensitivity_json(setup, tpot_el, capsys, tmp_path):
    import json

    from diffperf.cli import main

    png = tmp_path / "tornado.png"
    argv = ["sensitivity", "--scheme", "static", "--batch", "1", "--isl", "1024", "--osl", "128"]
    assert main([*argv, "--top", "5", "--plot", str(png), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("model", "hardware", "metric", "metric_value", "resources", "elasticities"):
        assert key in r
    assert len(r["elasticities"]) == 5 and png.stat().st_size > 0
    assert r["metric_value"] == pytest.approx(tpot_el.metric_value, rel=1e-12)
    assert r["resources"]["hbm_bw"] == pytest.approx(tpot_el.resources["hbm_bw"], rel=1e-9)
    assert main([*argv, "--metric", "latency"]) == 2
    assert "'latency' is not a metric" in capsys.readouterr().err
    assert main([*argv, "--set", "tp"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
