"""Exact deployment grid: enumeration rules, vectorised evaluation == brute force, Pareto."""

import itertools

import equinox as eqx
import numpy as np
import pytest

from diffperf.deploy import evaluate, load_workload
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.search import (
    GridSpace,
    afd_shape_error,
    enumerate_grid,
    enumerate_plans,
    evaluate_grid,
    grid_search,
    pareto_indices,
    scheme_class,
    select,
)
from diffperf.stages import ParallelPlan, PlanError, check_plan


def _needs(scheme):
    try:
        scheme_class(scheme)
    except ImportError as e:  # a scheme module that has not landed yet
        pytest.skip(f"{scheme} not available: {e}")


def _plan(row, prefix=""):
    return ParallelPlan(**{k: float(row[prefix + k]) for k in ("tp", "dp", "pp", "ep", "moe_tp")})


@pytest.mark.parametrize(
    "model_name,n,max_pp",
    [("llama-3.1-8b", 8, 2), ("qwen3-30b-a3b", 8, 1), ("deepseek-v3", 16, 2)],
    ids=["dense-8", "moe-gqa-8", "moe-mla-16"],
)
def test_plans_are_exactly_the_valid_ones(model_name, n, max_pp):
    """enumerate_plans == every (tp, dp, pp, ep, moe_tp) in 1..n that check_plan accepts,
    with tp, dp, pp dividing n, pp <= max_pp and tp*dp*pp <= n (brute force over all tuples)."""
    model = load_model(model_name)
    got = enumerate_plans(model, n, max_pp)
    got_set = {
        tuple(int(got[k][i]) for k in ("tp", "dp", "pp", "ep", "moe_tp"))
        for i in range(len(got["tp"]))
    }
    assert len(got_set) == len(got["tp"])  # no duplicates
    want = set()
    r = range(1, n + 1)
    for tp, dp, pp, ep, mtp in itertools.product(r, r, r, r, r):
        if n % tp or n % dp or n % pp or pp > max_pp or tp * dp * pp > n:
            continue
        try:
            check_plan(model, ParallelPlan(tp=tp, dp=dp, pp=pp, ep=ep, moe_tp=mtp))
        except PlanError:
            continue
        want.add((tp, dp, pp, ep, mtp))
    assert got_set == want


@pytest.mark.parametrize(
    "model_name,hw_name,n,scheme",
    [
        ("llama-3.1-8b", "h100-sxm", 8, "aggregated"),
        ("llama-3.1-8b", "h100-sxm", 8, "disaggregated"),
        ("qwen3-30b-a3b", "h100-sxm", 8, "disaggregated"),
        ("qwen3-30b-a3b", "h100-sxm", 8, "afd"),
        ("deepseek-v3", "h800", 32, "aggregated"),
        ("deepseek-v3", "gb200", 24, "afd"),
    ],
    ids=lambda v: str(v),
)
def test_every_design_is_valid_and_uses_n_devices(model_name, hw_name, n, scheme):
    model, hw = load_model(model_name), load_hardware(hw_name)
    t = enumerate_grid(hw, model, n, scheme, GridSpace(batch_ladder=(8, 64)))
    c = t.columns
    assert t.size > 0
    assert np.all(c["total_devices"] == n)
    prefixes = {"aggregated": [""], "disaggregated": ["prefill_", "decode_"], "afd": ["prefill_"]}
    for i in range(t.size):
        for p in prefixes[scheme]:
            check_plan(model, _plan({k: c[k][i] for k in c}, p))
        if scheme == "afd":
            err = afd_shape_error(
                model,
                c["attention_devices"][i],
                c["attention_tp"][i],
                c["ffn_devices"][i],
                c["ffn_moe_tp"][i],
            )
            assert err == ""
    if scheme == "aggregated":
        np.testing.assert_array_equal(c["concurrency"], c["instances"] * c["max_batch"])


def test_afd_on_dense_model_is_an_error():
    with pytest.raises(ValueError, match="no MoE layers"):
        enumerate_grid(load_hardware("h100-sxm"), load_model("llama-3.1-8b"), 8, "afd")
    assert "no MoE" in afd_shape_error(load_model("llama-3.1-8b"), 1, 1, 1, 1)


def test_unknown_scheme_is_an_error():
    with pytest.raises(ValueError, match="scheme"):
        enumerate_grid(load_hardware("h100-sxm"), load_model("llama-3.1-8b"), 8, "pipelined")


def test_pareto_indices_golden():
    # (x, y) maximising both, without the masked (3, 9): (1, 5) (2, 4) (3, 1) are
    # non-dominated; (2, 3) is dominated by (2, 4), (1, 2) by (1, 5). With it, (3, 9)
    # dominates every other point.
    x = np.array([1.0, 2.0, 3.0, 2.0, 1.0, 3.0])
    y = np.array([5.0, 4.0, 1.0, 3.0, 2.0, 9.0])
    mask = np.array([True, True, True, True, True, False])
    np.testing.assert_array_equal(pareto_indices(x, y, mask), [0, 1, 2])
    np.testing.assert_array_equal(pareto_indices(x, y), [5])


def test_grid_equals_brute_force_loop():
    """The vectorised grid picks the same design as a Python loop over evaluate() on a tiny
    space: Llama-3.1-8B on 4 H100s, aggregated, batch limits 4/16/64 (6 plans x 3 = 18)."""
    _needs("aggregated")
    Aggregated = scheme_class("aggregated")
    hw, model = load_hardware("h100-sxm"), load_model("llama-3.1-8b")
    w = load_workload("chat", isl_tokens=2048.0, osl_tokens=128.0, tpot_slo_s=0.012)
    ladder = (4, 16, 64)
    space = GridSpace(batch_ladder=ladder)
    res = grid_search(hw, model, 4, w, ["aggregated"], space)["aggregated"]
    assert res.table.size == 18

    ev = eqx.filter_jit(evaluate)
    brute = []
    for tp, dp in itertools.product((1, 2, 4), (1, 2, 4)):
        if tp * dp > 4 or 4 % (tp * dp):
            continue
        inst = 4 // (tp * dp)
        for b in ladder:
            plan = ParallelPlan(tp=tp, dp=dp)
            d = Aggregated(plan=plan, instances=inst, max_batch=b, max_num_tokens=8192.0)
            wl = eqx.tree_at(lambda x: x.concurrency, w, float(inst * b))
            m = ev(hw, model, d, wl)
            brute.append(
                ((tp, dp, inst, b), float(m.feasible), float(m.throughput_tok_s_per_device))
            )
    assert len(brute) == 18
    feas = [r for r in brute if r[1] > 0.5]
    assert 0 < len(feas) < len(brute)  # the TPOT SLO binds somewhere
    want = max(feas, key=lambda r: r[2])
    got = res.deployment(res.best)
    assert (got["plan"]["tp"], got["plan"]["dp"], got["instances"], got["max_batch"]) == want[0]
    np.testing.assert_allclose(
        float(res.metrics.throughput_tok_s_per_device[res.best]), want[2], rtol=1e-6
    )
    assert sum(r[1] > 0.5 for r in brute) == int(np.sum(res.metrics.feasible > 0.5))


def test_no_feasible_design_reason():
    _needs("aggregated")
    hw, model = load_hardware("h100-sxm"), load_model("llama-3.1-8b")
    w = load_workload("chat", isl_tokens=2048.0, osl_tokens=128.0, tpot_slo_s=1e-5)
    t = enumerate_grid(hw, model, 4, "aggregated", GridSpace(batch_ladder=(4, 16, 64)))
    r = select(t, evaluate_grid(hw, model, t, w))
    assert r.best is None
    assert "TPOT SLO" in r.reason and "18" in r.reason
    s = r.summary()
    assert s["best"] is None and s["feasible"] == 0
