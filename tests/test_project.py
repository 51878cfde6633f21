"""Projection: the returned resource is the SLO boundary; hand-derived capacity; model scaler."""

import equinox as eqx
import numpy as np
import pytest

from diffperf.deploy import SLO, Workload
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.model._scale import ScaleError, scale_model
from diffperf.search._project import constraint_ratios, project
from diffperf.search._sensitivity import Point, SensitivityError, StaticBatch, set_values
from diffperf.stages import estimate, make_plan


@pytest.fixture(scope="module")
def setup():
    hw = load_hardware("h100-sxm")
    model = load_model("llama-3.1-8b")
    deploy = StaticBatch(make_plan(model), batch=8.0)
    w = Workload(isl_tokens=1024.0, osl_tokens=256.0, slo=SLO(ttft_s=0.2, tpot_s=0.005))
    return hw, model, deploy, w


@pytest.fixture(scope="module")
def ratios_fn():
    return eqx.filter_jit(lambda p: constraint_ratios(p))


def test_bandwidth_for_tpot_is_the_boundary(setup, ratios_fn):
    hw, model, deploy, w = setup
    q = project(hw, model, deploy, w, "hbm_bw", constraints=("tpot",))
    assert q.status == "ok" and q.binding == "tpot" and q.limiting_resource == "hbm_bw"
    # 8 sequences of Llama-3.1-8B need ~16 GB of weights + KV per ~5 ms step: > 3.35 TB/s
    assert 1.0 < q.factor < 3.0
    point = Point(hw, deploy, w, model)
    at = ratios_fn(set_values(point, {"scale.hbm_bw": q.factor}))
    below = ratios_fn(set_values(point, {"scale.hbm_bw": q.factor * (1 - 1e-6)}))
    assert float(at[1]) <= 1.0 + 1e-12  # meets the TPOT SLO at the returned bandwidth
    assert float(below[1]) > 1.0  # and 1 ppm less bandwidth does not
    assert q.values["hbm_bw"] == pytest.approx(3.35 * q.factor, rel=1e-6)  # TB/s
    assert q.elasticities["hbm_bw"] < -0.5  # memory-bound decode


def test_capacity_requirement_is_the_memory_footprint(setup):
    # memory_margin_frac = 1 - total / (usable_fraction · capacity · s), so the least factor
    # meeting it is s* = total / (usable_fraction · capacity) = total_bytes / capacity_bytes
    # of estimate's memory report (weights + KV at ISL+OSL for 8 sequences + activations).
    hw, model, deploy, w = setup
    q = project(hw, model, deploy, w, "hbm_capacity", constraints=("memory",))
    mem = estimate(hw, model, deploy.plan, 8.0, 1024.0, 256.0).memory
    expected = float(mem.total_bytes) / float(mem.capacity_bytes)
    assert q.factor == pytest.approx(expected, rel=1e-9)
    assert q.binding == "memory"
    # weights alone are 16.06e9 bytes (8.03e9 params in bf16) of 72e9 usable: s* > 0.22
    assert 16.06e9 / 72e9 < q.factor < 0.5


@pytest.mark.slow
def test_unreachable_and_joint(setup):
    hw, model, deploy, w = setup
    # compute alone cannot fix a memory-bound TPOT: unreachable, TPOT still binds at hi
    q = project(hw, model, deploy, w, "flops", constraints=("tpot",), hi=1e3)
    assert q.status == "unreachable" and q.binding == "tpot"
    bw = project(hw, model, deploy, w, "hbm_bw", constraints=("tpot",))
    joint = project(hw, model, deploy, w, {"hbm_bw": 1.0, "flops": 1.0}, constraints=("tpot",))
    assert joint.factor <= bw.factor * (1 + 1e-9)  # scaling FLOP/s too can only help


def test_projection_errors(setup):
    hw, model, deploy, w = setup
    with pytest.raises(SensitivityError, match="'hbm'"):
        project(hw, model, deploy, w, "hbm")
    with pytest.raises(SensitivityError, match="exponent"):
        project(hw, model, deploy, w, {"hbm_bw": -1.0})
    with pytest.raises(SensitivityError, match="latency"):
        project(hw, model, deploy, w, "hbm_bw", constraints=("latency",))
    with pytest.raises(SensitivityError, match="bracket"):
        project(hw, model, deploy, w, "hbm_bw", lo=10.0, hi=1.0)


def test_million_token_context_is_finite(setup, ratios_fn):
    hw, model, deploy, w = setup
    point = Point(hw, deploy, w, model)
    r = ratios_fn(set_values(point, {"workload.isl_tokens": 1e6}))
    assert np.all(np.isfinite(np.asarray(r)))
    # 8 x 1M tokens of KV: 8 · 1e6 · 131072 B/token ≈ 1 TB, far beyond one 80 GB device
    assert float(r[2]) > 10.0


@pytest.mark.parametrize(
    "name,target,kw",
    [
        ("llama-3.1-8b", 10e12, {}),
        ("deepseek-v3", 10e12, {}),
        ("deepseek-v3", 10e12, {"expert_exponent": 1.0}),
        ("qwen3-30b-a3b", 1e12, {}),
    ],
)
def test_scaled_model_hits_target(name, target, kw):
    m = scale_model(load_model(name), target, **kw)
    assert float(m.param_count()) == pytest.approx(target, rel=5e-3)
    assert float(m.num_layers) == round(float(m.num_layers))
    assert float(m.num_heads) == round(float(m.num_heads))
    make_plan(m, tp=8)  # heads (and GQA KV heads) still split over 8 devices


def test_scaling_llama_8b_to_405b_reproduces_the_released_shape():
    # Llama-3.1-405B (config.json): hidden 16384, 128 heads, 8 KV heads, 126 layers, FFN 53248
    m = scale_model(load_model("llama-3.1-8b"), 405.8e9)
    assert float(m.hidden_size) == 16384.0
    assert float(m.num_heads) == 128.0 and float(m.num_kv_heads) == 8.0
    assert abs(float(m.num_layers) - 126.0) <= 3.0
    assert float(m.ffn_intermediate) == pytest.approx(53248.0, rel=0.03)


def test_scale_errors():
    spec = load_model("llama-3.1-8b")
    with pytest.raises(ScaleError, match="params_target"):
        scale_model(spec, -1.0)
    with pytest.raises(ScaleError, match="below the smallest"):
        scale_model(spec, 1e6)
    with pytest.raises(ScaleError, match="depth_exponent"):
        scale_model(spec, 1e12, depth_exponent=-1.0)


def test_cli_project_json(setup, capsys):
    import json

    from diffperf.cli import main

    argv = ["project", "--scheme", "static", "--batch", "8", "--isl", "1024", "--osl", "256"]
    argv += ["--ttft-slo", "0.2", "--tpot-slo", "0.005"]
    assert main([*argv, "--resources", "hbm_capacity", "--constraints", "memory", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    q = r["requirements"]["hbm_capacity"]
    for key in ("factor", "values", "units", "binding", "status", "elasticities"):
        assert key in q
    hw, model, deploy, w = setup
    mem = estimate(hw, model, deploy.plan, 8.0, 1024.0, 256.0).memory
    assert q["factor"] == pytest.approx(float(mem.total_bytes / mem.capacity_bytes), rel=1e-9)
    assert q["units"]["hbm_capacity"] == "GB" and q["binding"] == "memory"
    assert main([*argv, "--resources", "hbm"]) == 2
    assert "'hbm'" in capsys.readouterr().err
