"""Gradient search: agreement with the exact grid, objectives by hand, rounding, seeds, grads.

Compile time dominates: every case of one (model, scheme) shares the compiled ascent and the
compiled exact evaluator (same settings, same padded sizes), so SLO variants cost only their
run time.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.deploy import load_workload
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.search import GridSpace, afd_shape_error, enumerate_grid, grid_search
from diffperf.search._objective import (
    Objective,
    device_cost,
    make_objective,
    objective_value,
    relaxed_objective,
)
from diffperf.search._optimize import OptimizeSettings, _design_metrics, optimize_scheme
from diffperf.search._relax import (
    HardwareSpace,
    RelaxedSpace,
    hardware_value,
    with_hardware_values,
)
from diffperf.stages import ParallelPlan, check_plan


SETTINGS = OptimizeSettings(starts=8, steps=60, neighbours=8, seed=0)
LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SPACE = GridSpace(batch_ladder=LADDER)
MOE_SPACE = GridSpace(
    batch_ladder=(1, 4, 16, 64, 256), prefill_batch_ladder=(1, 4), microbatches=(1, 2)
)


@pytest.fixture(scope="module")
def h100():
    return load_hardware("h100-sxm")


# --------------------------------------------------------------------------------------------
# the optimiser's rounded answer == the exact grid optimum of the same space (within 1%)
# --------------------------------------------------------------------------------------------

# (model, devices, scheme, space, TTFT SLO s, TPOT SLO s). "loose": the chat preset's SLOs
# (2 s, 50 ms); "tight": a TPOT SLO that forces small batches and high TP (15 ms for the 8B,
# 25 ms for the 30B-A3B MoE) and a 1 s TTFT.
CASES = [
    ("llama-3.1-8b", 8, "aggregated", SPACE, None, None),
    ("llama-3.1-8b", 8, "aggregated", SPACE, 1.0, 0.015),
    ("qwen3-30b-a3b", 8, "disaggregated", MOE_SPACE, None, None),
    ("qwen3-30b-a3b", 8, "disaggregated", MOE_SPACE, 1.0, 0.025),
    ("qwen3-30b-a3b", 8, "afd", MOE_SPACE, None, None),
    ("qwen3-30b-a3b", 8, "afd", MOE_SPACE, 1.0, 0.025),
]
CASE_IDS = [
    "dense-agg-loose",
    "dense-agg-tight",
    "moe-pd-loose",
    "moe-pd-tight",
    "moe-afd-loose",
    "moe-afd-tight",
]


@pytest.mark.parametrize("model_name,n,scheme,space,ttft,tpot", CASES, ids=CASE_IDS)
def test_rounded_answer_matches_grid_optimum(h100, model_name, n, scheme, space, ttft, tpot):
    model = load_model(model_name)
    w = load_workload("chat", ttft_slo_s=ttft, tpot_slo_s=tpot)
    g = grid_search(h100, model, n, w, [scheme], space)[scheme]
    r = optimize_scheme(h100, model, n, w, scheme, space, settings=SETTINGS)
    assert g.best is not None, g.reason  # every case has a feasible design
    best = float(g.metrics.throughput_tok_s_per_device[g.best])
    assert r.meets_slo
    assert r.metrics["feasible"]
    # like with like: the same design's exact metrics as the grid's row
    assert r.metrics["throughput_tok_s_per_device"] == pytest.approx(
        float(g.metrics.throughput_tok_s_per_device[r.row]), rel=1e-9
    )
    assert r.objective >= 0.99 * best
    assert r.space_size == g.table.size
    if g.table.size > 1000:  # the search looks at a fraction of the space
        assert r.evaluated < 0.5 * g.table.size


# --------------------------------------------------------------------------------------------
# objectives by hand
# --------------------------------------------------------------------------------------------


class _M(eqx.Module):
    throughput_tok_s_per_device: jax.Array
    penalty: jax.Array


def test_objective_values_by_hand(h100):
    m = _M(jnp.asarray(1000.0), jnp.asarray(0.0))
    # H100 preset: 2.50 USD/h, 700 W. Electricity 0.10 USD/kWh -> 0.7 kW * 0.10 = 0.07 USD/h;
    # 3600 s/h * 1000 tok/s / 2.57 USD/h = 1,400,778.21 tok/USD.
    v = objective_value(m, h100, make_objective("tokens-per-dollar"))
    assert float(v) == pytest.approx(3600 * 1000 / 2.57, rel=1e-12)
    # 1000 tok/s / 700 W = 1.428571 tok/J
    v = objective_value(m, h100, make_objective("tokens-per-watt"))
    assert float(v) == pytest.approx(1000 / 700, rel=1e-12)
    assert float(objective_value(m, h100, make_objective())) == 1000.0
    # overrides: 4 USD/h and 1000 W at 0.20 USD/kWh -> 4 + 1.0 * 0.2 = 4.2 USD/h
    o = make_objective("tokens-per-dollar", 0.2, price_usd_per_hour=4.0, power_w=1000.0)
    assert float(objective_value(m, h100, o)) == pytest.approx(3600 * 1000 / 4.2, rel=1e-12)
    # relaxed: log(1000) - 30 * penalty
    m2 = _M(jnp.asarray(1000.0), jnp.asarray(0.1))
    assert float(relaxed_objective(m2, h100, Objective(), 30.0)) == pytest.approx(
        np.log(1000.0) - 3.0, rel=1e-12
    )
    # zero throughput: finite value and finite gradient
    f = jax.grad(lambda t: relaxed_objective(_M(t, jnp.asarray(0.0)), h100, Objective(), 30.0))
    assert np.isfinite(float(f(jnp.asarray(0.0))))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "tokens-per-euro"},
        {"kind": "tokens-per-watt", "power_w": -5.0},
        {"kind": "tokens-per-dollar", "electricity_usd_per_kwh": float("nan")},
        {"kind": "tokens-per-dollar", "price_usd_per_hour": 0.0},
    ],
)
def test_bad_objective_inputs_raise_value_error(kwargs):
    with pytest.raises(ValueError, match="objective|power_w|electricity|price"):
        make_objective(**kwargs)


def test_anchored_cost_model_keeps_base_price(h100):
    from diffperf.hardware._cost_model import default_cost_model

    cm = default_cost_model()
    o = make_objective("tokens-per-dollar")
    p, w = device_cost(h100, o, cm, h100)
    assert float(p) == pytest.approx(2.5, rel=1e-12)
    assert float(w) == pytest.approx(700.0, rel=1e-12)
    # doubling HBM bandwidth raises both by the model's slope, relative to the base
    h2 = with_hardware_values(h100, ("hbm_bandwidth",), [2 * float(h100.accel.hbm.bw_bytes_per_s)])
    p2, w2 = device_cost(h2, o, cm, h100)
    bw = float(h100.accel.hbm.bw_bytes_per_s)
    want = 2.5 * (1 + float(cm.price.coef[1]) * bw / float(cm.price_usd_per_hour(h100)))
    assert float(p2) == pytest.approx(want, rel=1e-9)
    assert float(p2) > 2.5 and float(w2) >= 700.0


# --------------------------------------------------------------------------------------------
# relaxed space: exact round trip, rounding validity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_name,scheme,space",
    [
        ("llama-3.1-8b", "aggregated", SPACE),
        ("qwen3-30b-a3b", "disaggregated", MOE_SPACE),
        ("qwen3-30b-a3b", "afd", MOE_SPACE),
    ],
    ids=["dense-agg", "moe-pd", "moe-afd"],
)
def test_rows_round_trip_and_rounding_is_valid(h100, model_name, scheme, space):
    model = load_model(model_name)
    t = enumerate_grid(h100, model, 8, scheme, space)
    rs = RelaxedSpace.from_table(t, 8)
    assert rs.rows.min() >= 0 and rs.rows.max() <= 1 + 1e-12
    idx = np.arange(0, t.size, max(t.size // 50, 1))
    for i in idx:
        c = rs.box.columns(jnp.asarray(rs.rows[i]))
        for k, v in c.items():
            assert float(v) == pytest.approx(float(t.columns[k][i]), rel=1e-9), (k, i)
    # rounding random relaxed points lands on valid designs that use exactly 8 devices
    z = np.random.default_rng(0).uniform(size=(20, rs.dim))
    near = rs.nearest(z, 3)
    assert near.shape == (20, min(3, t.size))
    for i in near.reshape(-1):
        c = {k: v[i] for k, v in t.columns.items()}
        assert int(c["total_devices"]) == 8
        if scheme == "afd":
            assert not afd_shape_error(
                model,
                c["attention_devices"],
                c["attention_tp"],
                c["ffn_devices"],
                c["ffn_moe_tp"],
            )
        for prefix in {"aggregated": ("",)}.get(scheme, ("prefill_", "decode_")):
            if prefix + "tp" not in c:
                continue
            check_plan(
                model,
                ParallelPlan(
                    **{k: float(c[prefix + k]) for k in ("tp", "dp", "pp", "ep", "moe_tp")}
                ),
            )
    # the nearest row to a row's own coordinates is itself
    assert rs.nearest(rs.rows[idx[:5]], 1)[:, 0].tolist() == idx[:5].tolist()


def test_kd_tree_rounding_and_axis_moves_match_brute_force(h100):
    model = load_model("qwen3-30b-a3b")
    t = enumerate_grid(h100, model, 8, "disaggregated", MOE_SPACE)
    rs = RelaxedSpace.from_table(t, 8)
    z = np.random.default_rng(1).uniform(size=(12, rs.dim))
    k = 7
    near = rs.nearest(z, k)
    # brute force: the k smallest Euclidean distances to every row; the tree returns the
    # same distances in the same (ascending) order (rows at equal distance may swap)
    d_all = ((z[:, None, :] - rs.rows[None, :, :]) ** 2).sum(axis=2)
    d_tree = np.take_along_axis(d_all, near, axis=1)
    np.testing.assert_allclose(d_tree, np.sort(d_all, axis=1)[:, :k], rtol=1e-12, atol=1e-12)
    # axis moves: rows whose coordinates differ from the row's in 1 or 2 places
    for row in (0, t.size // 3, t.size - 1):
        changed = (np.abs(rs.rows - rs.rows[row]) > 1e-9).sum(axis=1)
        want = np.flatnonzero((changed >= 1) & (changed <= 2))
        got = rs.axis_neighbours(row, 2, cap=10**9)
        np.testing.assert_array_equal(np.sort(got), want)
        one = rs.axis_neighbours(row, 1, cap=10**9)
        np.testing.assert_array_equal(np.sort(one), np.flatnonzero(changed == 1))


def test_space_cache_reuses_read_only_tables(h100, monkeypatch):
    from diffperf.search import _optimize
    from diffperf.search._optimize import _relaxed_space

    model = load_model("llama-3.1-8b")
    dt = ("bf16", "bf16", "bf16", "bf16")
    a = _relaxed_space(h100, model, 8, "aggregated", SPACE, dt)
    assert _relaxed_space(h100, model, 8, "aggregated", SPACE, dt) is a
    # any change of what the table depends on builds another one
    h2 = with_hardware_values(h100, ("hbm_capacity",), [12e9])
    b = _relaxed_space(h2, model, 8, "aggregated", SPACE, dt)
    # 16 GB of BF16 weights: TP=1 plans no longer fit in 12 GB, so the table shrinks
    assert b is not a and b.table.size < a.table.size
    assert _relaxed_space(h100, model, 4, "aggregated", SPACE, dt) is not a
    with pytest.raises(ValueError, match="read-only"):
        a.table.columns["tp"][0] = 3.0
    # bounded by designs held: least recently used spaces go first, the newest always stays
    monkeypatch.setattr(_optimize, "_SPACES", {})
    monkeypatch.setattr(_optimize, "_SPACES_MAX_ROWS", a.table.size + 1)
    a = _relaxed_space(h100, model, 8, "aggregated", SPACE, dt)
    c = _relaxed_space(h100, model, 4, "aggregated", SPACE, dt)
    assert list(_optimize._SPACES.values()) == [c]
    monkeypatch.setattr(_optimize, "_SPACES_MAX_ROWS", 0)
    assert _relaxed_space(h100, model, 8, "aggregated", SPACE, dt) is not a
    assert len(_optimize._SPACES) == 1


# --------------------------------------------------------------------------------------------
# reproducibility, finite gradients at infeasible points
# --------------------------------------------------------------------------------------------


def test_same_seed_same_answer(h100):
    model = load_model("llama-3.1-8b")
    w = load_workload("chat")
    a = optimize_scheme(h100, model, 8, w, "aggregated", SPACE, settings=SETTINGS)
    b = optimize_scheme(h100, model, 8, w, "aggregated", SPACE, settings=SETTINGS)
    assert a.row == b.row
    np.testing.assert_array_equal(a.path, b.path)


def test_finite_gradients_at_infeasible_and_box_corners(h100):
    model = load_model("llama-3.1-8b")
    # a TPOT SLO of 1 ms no design meets: every point is infeasible
    w = load_workload("chat", tpot_slo_s=0.001)
    t = enumerate_grid(h100, model, 8, "aggregated", SPACE)
    rs = RelaxedSpace.from_table(t, 8)
    dt = t.dtypes

    def f(z):
        m = _design_metrics(h100, model, w, rs.box, z, dt, True, 0.05)
        return relaxed_objective(m, h100, Objective(), 30.0)

    g = jax.jit(jax.grad(f))
    for z in (np.zeros(rs.dim), np.ones(rs.dim), np.full(rs.dim, 0.37)):
        assert np.all(np.isfinite(np.asarray(g(jnp.asarray(z)))))
        assert np.isfinite(float(f(jnp.asarray(z))))


# --------------------------------------------------------------------------------------------
# hardware as a variable: the exact hardware x deployment space, searched
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~40 s of compile on 2 cores; bench_search.py exercises the same path
def test_hardware_search_matches_exhaustive_small_space(h100):
    """HBM bandwidth at 4 levels x the aggregated table, tokens per dollar: the optimiser's
    rounded answer is within 1% of brute force over all 4 x size points."""
    from diffperf.search._optimize import _exact, _pick

    model = load_model("llama-3.1-8b")
    w = load_workload("chat")
    hs = HardwareSpace.make(["hbm_bandwidth"], {"hbm_bandwidth": (1e12, 8e12)}, 4)
    np.testing.assert_allclose(hs.levels[0], [1e12, 2e12, 4e12, 8e12], rtol=1e-12)
    obj = make_objective("tokens-per-dollar")
    r = optimize_scheme(h100, model, 8, w, "aggregated", SPACE, obj, hs, SETTINGS)
    t = r.space.table
    from diffperf.hardware._cost_model import default_cost_model

    rows = np.repeat(np.arange(t.size), 4)
    hidx = np.tile(np.arange(4), t.size)[:, None]
    ctx = (h100, model, w, r.space, hs, obj, default_cost_model(), True)
    m, val, _ = _exact(ctx, rows, hidx)
    j = _pick(m, val)
    assert r.space_size == 4 * t.size
    assert r.meets_slo and m.feasible[j] > 0.5
    assert r.objective >= 0.99 * val[j]
    assert set(r.hardware) == {"hbm_bandwidth"}
    assert r.hardware["hbm_bandwidth"] in hs.levels[0]


def test_hardware_space_values_and_errors(h100):
    hs = HardwareSpace.make(["flops", "domain_size"], None, 8)
    v = np.asarray(hs.values(np.array([0.0, 1.0])))
    np.testing.assert_allclose(v, [0.25e15, 256.0], rtol=1e-12)
    assert all(float(x).is_integer() for x in hs.levels[1])
    h2 = with_hardware_values(h100, ("flops",), [2 * 989.4e12])
    # the FP8 peak scales with BF16: 1978.9 TFLOP/s * 2
    assert float(h2.accel.peak_fp8_flop_per_s) == pytest.approx(
        2 * float(h100.accel.peak_fp8_flop_per_s), rel=1e-6
    )
    assert float(hardware_value(h2, "flops")) == pytest.approx(2 * 989.4e12, rel=1e-6)
    with pytest.raises(ValueError, match="hbm_speed"):
        HardwareSpace.make(["hbm_speed"])
    with pytest.raises(ValueError, match="bounds of flops"):
        HardwareSpace.make(["flops"], {"flops": (5e15, 1e15)})


@pytest.mark.slow
def test_deepseek_afd_matches_grid(h100):
    model = load_model("deepseek-v3")
    w = load_workload("chat")
    hw = load_hardware("h800")
    space = GridSpace(batch_ladder=(4, 16, 64, 256), prefill_batch_ladder=(1, 4))
    g = grid_search(hw, model, 32, w, ["afd"], space)["afd"]
    r = optimize_scheme(hw, model, 32, w, "afd", space, settings=OptimizeSettings(seed=0))
    best = float(g.metrics.throughput_tok_s_per_device[g.best])
    assert r.objective >= 0.99 * best


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_optimize_json_keys(capsys):
    import json

    from diffperf.cli import main

    rc = main(
        [
            "optimize",
            "--model",
            "llama-3.1-8b",
            "--devices",
            "8",
            "--schemes",
            "aggregated",
            "--max-batch",
            "512",
            "--starts",
            "8",
            "--steps",
            "60",
            "--neighbours",
            "8",
            "--json",
        ]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    b = r["best"]
    # the keys of compare's best (metrics + the rounded deployment), plus objective/meets_slo
    for k in ("scheme", "throughput_tok_s_per_device", "ttft_pct_s", "tpot_pct_s", "feasible"):
        assert k in b
    assert b["deployment"]["devices"] == 8 and b["deployment"]["scheme"] == "aggregated"
    assert b["objective"] == pytest.approx(b["throughput_tok_s_per_device"], rel=1e-12)
    assert b["meets_slo"] is True and r["meets_slo"] is True
    assert r["wall_s"] > 0 and r["objective"]["kind"] == "tokens-per-device"
    # 10 plans (tp, dp) with tp*dp dividing 8: (1,1) (1,2) (1,4) (1,8) (2,1) (2,2) (2,4) (4,1)
    # (4,2) (8,1), each using all 8 devices, x 10 batch limits 1..512
    assert r["schemes"]["aggregated"]["space_size"] == 100


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--devices", "0"], "--devices = 0"),
        (["--devices", "8", "--schemes", "agg,bogus"], "--schemes"),
        (["--devices", "8", "--bound", "flops=1:2"], "--bound needs --optimize-hardware"),
    ],
)
def test_cli_optimize_errors(capsys, argv, match):
    from diffperf.cli import main

    assert main(["optimize", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffperf: error:") and match in err


def test_hardware_names_are_shared_by_optimize_sensitivity_and_project():
    """One vocabulary across commands: every resource of sensitivity/project is a hardware
    search parameter under its other spelling, both spellings are accepted everywhere, and
    both name the same hardware leaves."""
    from diffperf._hardware_names import (
        RESOURCE_TO_PARAM,
        canonical_hardware_param,
        canonical_resource,
    )
    from diffperf.search._relax import HARDWARE_PARAMS, HardwareSpace, hardware_value
    from diffperf.search._sensitivity import RESOURCES

    assert set(RESOURCE_TO_PARAM) == set(RESOURCES)
    hw = load_hardware("h100-sxm")
    for res, param in RESOURCE_TO_PARAM.items():
        assert param in HARDWARE_PARAMS
        assert canonical_hardware_param(res) == param and canonical_resource(param) == res
        assert HardwareSpace.make([res.replace("_", "-")]).names == (param,)
        # the first leaf a resource scales is the value the search parameter sets
        leaf = RESOURCES[res][0][0].split(".")
        v = hw
        for part in leaf:
            v = getattr(v, part)
        assert float(v) == float(hardware_value(hw, param))
    hs = HardwareSpace.make(["hbm-bw", "hbm_bandwidth"], {"hbm_bw": (2e12, 4e12)})
    assert hs.names == ("hbm_bandwidth",) and hs.lo[0] == 2e12 and hs.hi[0] == 4e12


def test_cli_accepts_sensitivity_spellings_of_hardware_params(capsys):
    from diffperf.cli import build_parser

    args = build_parser().parse_args(
        ["optimize", "--devices", "8", "--optimize-hardware", "hbm_bw", "flops"]
        + ["--bound", "hbm_bw=2000:4000"]
    )
    assert args.optimize_hardware == ["hbm_bandwidth", "flops"]
    assert args.bound == [("hbm_bandwidth", 2000e9, 4000e9)]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["optimize", "--devices", "8", "--optimize-hardware", "hbm"])
    err = capsys.readouterr().err
    assert "'hbm'" in err and "hbm_bandwidth" in err
