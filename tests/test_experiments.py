"""Building blocks of experiments/afd_vs_pd.py on synthetic metrics and tiny real tables.

No serving scheme is compiled here (each costs ~20-40 s); the grid evaluation itself is
tested in test_grid.py. These check the SLO re-selection, the infeasibility reasons, the AFD
split description, the jit-sharing relabelling and the report rendering.
"""

import dataclasses

import jax
import numpy as np
import pytest

from diffperf.deploy import Metrics, load_workload
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.search import GridSpace, enumerate_grid, select
from diffperf.search._grid import GridTable
from experiments import afd_vs_pd as x


def _metrics(**kw) -> dict:
    n = len(next(iter(kw.values())))
    base = {
        "throughput_tok_s": np.full(n, 1000.0),
        "throughput_tok_s_per_device": np.full(n, 10.0),
        "throughput_tok_s_per_user": np.full(n, 40.0),
        "ttft_pct_s": np.full(n, 0.5),
        "tpot_pct_s": np.full(n, 0.015),
        "memory_ok": np.ones(n),
        "rate_ok": np.ones(n),
    }
    base.update({k: np.asarray(v, dtype=float) for k, v in kw.items()})
    return base


def test_slo_levels_chat():
    # chat preset: p90 TTFT 2 s, TPOT 25 ms; strict: TPOT 20 ms, TTFT 0.5 x 2 s = 1 s
    lv = x.slo_levels(load_workload("chat"))
    assert lv["preset"] == pytest.approx((2.0, 0.025))
    assert lv["strict"] == pytest.approx((1.0, 0.020))
    assert lv["tight"] == pytest.approx((1.0, 0.015))


def test_best_index_and_feasible():
    m = _metrics(
        throughput_tok_s_per_device=[50.0, 40.0, 30.0, 20.0],
        tpot_pct_s=[0.030, 0.018, 0.015, 0.010],
        memory_ok=[1, 1, 0, 1],
    )
    # row 0 misses 20 ms, row 2 does not fit: best is row 1 (40 tok/s/GPU)
    mask = x.feasible(m, 1.0, 0.020)
    assert mask.tolist() == [False, True, False, True]
    assert x.best_index(m, mask) == 1
    assert x.best_index(m, np.zeros(4, bool)) is None


def test_best_matches_grid_select():
    # the preset-SLO selection equals diffperf.search.select on the same metrics
    rng = np.random.default_rng(0)
    n = 64
    m = _metrics(
        throughput_tok_s_per_device=rng.uniform(1, 100, n),
        throughput_tok_s_per_user=rng.uniform(10, 200, n),
        ttft_pct_s=rng.uniform(0.1, 3.0, n),
        tpot_pct_s=rng.uniform(0.005, 0.05, n),
        memory_ok=rng.uniform(size=n) > 0.2,
        rate_ok=rng.uniform(size=n) > 0.1,
    )
    slo_ttft, slo_tpot = 2.0, 0.025
    flags = {
        "slo_ttft_ok": (m["ttft_pct_s"] <= slo_ttft).astype(float),
        "slo_tpot_ok": (m["tpot_pct_s"] <= slo_tpot).astype(float),
    }
    feas = m["memory_ok"] * m["rate_ok"] * flags["slo_ttft_ok"] * flags["slo_tpot_ok"]
    fields = {f.name: np.zeros(n) for f in dataclasses.fields(Metrics)}
    fields.update(m, **flags, feasible=feas)
    table = GridTable("aggregated", {"concurrency": np.ones(n)}, ("bf16",) * 4, n)
    ref = select(table, Metrics(**fields))
    assert x.best_index(m, x.feasible(m, slo_ttft, slo_tpot)) == ref.best
    assert x.pareto(m).tolist() == ref.pareto.tolist()


@pytest.mark.parametrize(
    "kw,start",
    [
        ({"memory_ok": [0, 0]}, "memory"),
        ({"rate_ok": [0, 0]}, "rate"),
        ({"tpot_pct_s": [0.03, 0.04]}, "TPOT: best p90 30.0 ms"),
        ({"ttft_pct_s": [3.0, 4.0]}, "TTFT: best p90 3.00 s"),
        ({"ttft_pct_s": [3.0, 0.5], "tpot_pct_s": [0.01, 0.03]}, "TTFT+TPOT"),
    ],
    ids=["memory", "rate", "tpot", "ttft", "joint"],
)
def test_infeasibility_reasons(kw, start):
    m = _metrics(**kw)
    assert not x.feasible(m, 2.0, 0.02).any()
    assert x.infeasibility(m, 2, 2.0, 0.02).startswith(start)


def test_infeasibility_empty_table():
    m = {k: np.zeros(0) for k in x._FIELDS}
    assert x.infeasibility(m, 0, 1.0, 0.02).startswith("no valid plan")
    assert x.infeasibility(m, 12, 1.0, 0.02).startswith("memory: weights overflow")
    assert "attention/FFN unit" in x.infeasibility(m, 12, 1.0, 0.02, "afd")


@pytest.fixture(scope="module")
def afd_table():
    # a tiny real AFD table: Qwen3-30B-A3B (128 experts) on 8 H100s, two batch sizes
    hw = load_hardware("h100-sxm")
    model = load_model("qwen3-30b-a3b")
    space = GridSpace(batch_ladder=(1, 8), prefill_batch_ladder=(1,), microbatches=(2,))
    return enumerate_grid(hw, model, 8, "afd", space, ("bf16", "bf16", "fp8", "bf16"))


def test_afd_split_and_profile(afd_table):
    cols = afd_table.columns
    assert afd_table.size > 0
    i = 0
    sp = x.afd_split(cols, i)
    a, f = int(cols["attention_devices"][i]), int(cols["ffn_devices"][i])
    assert (sp["attention_devices"], sp["ffn_devices"]) == (a, f)
    assert sp["a_over_f"] == pytest.approx(a / f)
    assert sp["ffn_ep"] * sp["ffn_moe_tp"] == f
    # every design uses all 8 devices: prefill pool + units x (A + F)
    assert sp["prefill_devices"] + sp["units"] * (a + f) == 8
    assert f"({a}A+{f}F)" in x.describe("afd", cols, i)
    # the profile ranks A:F shapes by their best throughput
    thr = np.arange(afd_table.size, dtype=float)
    prof = x.split_profile(
        cols, {"throughput_tok_s_per_device": thr}, np.ones(afd_table.size, bool)
    )
    assert prof[0]["tok_s_per_gpu"] == thr[-1]
    assert [p["tok_s_per_gpu"] for p in prof] == sorted(
        (p["tok_s_per_gpu"] for p in prof), reverse=True
    )


def test_shared_trace_hardware_keeps_numbers():
    h200, h800 = load_hardware("h200-sxm"), load_hardware("h800")
    s200, s800 = x.shared_trace_hardware(h200), x.shared_trace_hardware(h800)
    # same static structure (one compilation) and exactly the same leaves as the originals
    assert jax.tree_util.tree_structure(s200) == jax.tree_util.tree_structure(s800)
    for a, b in zip(jax.tree_util.tree_leaves(h200), jax.tree_util.tree_leaves(s200)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    for fmt in ("bf16", "fp8", "fp32"):
        assert s200.accel.compute_precision(fmt) == h200.accel.compute_precision(fmt)


def _record(scheme, wl, tok, hw="gb200", model=x.MAIN_MODEL):
    slo = {}
    levels = (("preset", (2.0, 0.025)), ("strict", (1.0, 0.02)), ("tight", (1.0, 0.015)))
    for level, (ttft, tpot) in levels:
        r = {"ttft_slo_s": ttft, "tpot_slo_s": tpot, "feasible": int(tok is not None)}
        if tok is None:
            r["reason"] = "TPOT: best p90 30.0 ms > 20 ms"
        else:
            r.update(
                tok_s_per_gpu=tok,
                tok_s=64 * tok,
                tok_s_per_user=60.0,
                ttft_p90_s=0.5,
                tpot_p90_s=0.016,
                deployment="d",
            )
            if scheme == "afd":
                r["split"] = {
                    "attention_devices": 16,
                    "ffn_devices": 32,
                    "a_over_f": 0.5,
                    "prefill_devices": 16,
                    "text": "1x(16A+32F)",
                }
                r["split_profile"] = [{"A": 16, "F": 32, "tok_s_per_gpu": tok}]
        slo[level] = r
    return {
        "model": model,
        "hardware": hw,
        "devices": 64,
        "workload": wl,
        "scheme": scheme,
        "designs": 10,
        "servable": 5,
        "pareto": [(60.0, tok or 1.0)],
        "cloud": (np.array([60.0]), np.array([tok or 1.0])),
        "slo": slo,
    }


def test_report_from_synthetic_records(tmp_path):
    recs = [
        _record("aggregated", "chat", None),
        _record("disaggregated", "chat", 40.0),
        _record("afd", "chat", 60.0),
        _record("aggregated", "coding", None),
        _record("disaggregated", "coding", None),
        _record("afd", "coding", 30.0),
    ]
    rows = x.main_table(recs)
    assert len(rows) == 6  # 2 workloads x 3 SLO levels
    chat = rows[0]
    assert chat[:2] == ["gb200 x64", "chat"]
    assert chat[6] == "afd" and chat[8] == "1.50x"  # 60 / 40
    assert rows[3][8] == "only AFD"
    f = x.findings(recs)
    assert "Only AFD meets the SLO in 1: gb200x64 coding" in f[0]
    assert "1.50-1.50" in f[0]
    assert any("A/F" in s for s in f)
    md = x.render(recs, x.QUICK, 1.0, ["a.png"])
    assert "| gb200 x64 | chat |" in md and "![a.png](a.png)" in md
    assert "TPOT: best p90 30.0 ms" in md
