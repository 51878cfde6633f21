"""Pipeline search (``optimize --pipeline``) and pipeline sweeps (``sweep --pipeline``):
rounded optimum vs an exhaustive grid, seeds, rounded-design validity, CLI keys and rows."""

import csv
import itertools
import json

import numpy as np
import pytest

from diffperf.cli import main
from diffperf.pipeline import evaluate, load_pipeline, objective
from diffperf.search._pipeline_opt import (
    PipelineSearchSettings,
    search_pipeline,
    set_design_values,
)
from diffperf.search._sweep import (
    SweepError,
    load_pipeline_space,
    pipeline_leaf_names,
    resolve_pipeline_name,
    set_pipeline_values,
)


# Two dedicated engines: "a" (4 devices) runs a 5 ms and a 15 ms CPU stage, "b" (1 device)
# a 2 ms stage; each stage spreads a batch over 4 lanes, so batching up to 4 raises capacity.
_TOML = """
name = "two-engines"
arrival_rate_per_s = 200.0
[slo]
e2e_ms = 200
[engines.a]
hardware = "xeon-8480"
count = 4
shared_memory = false
[engines.b]
hardware = "xeon-8480"
count = 1
shared_memory = false
[[stages]]
name = "s1"
type = "cpu"
engine = "a"
share = 0.5
per_request_ms = 5.0
parallel_lanes = 4
batching = "continuous"
batch_size = 2
[[stages]]
name = "s2"
type = "cpu"
engine = "a"
share = 0.5
per_request_ms = 15.0
parallel_lanes = 4
batching = "continuous"
batch_size = 2
[[stages]]
name = "s3"
type = "cpu"
engine = "b"
per_request_ms = 2.0
parallel_lanes = 4
batching = "continuous"
batch_size = 2
"""

_SETTINGS = PipelineSearchSettings(starts=4, steps=60, seed=3)


@pytest.fixture(scope="module")
def toml_path(tmp_path_factory):
    f = tmp_path_factory.mktemp("pipe") / "two.toml"
    f.write_text(_TOML)
    return f


@pytest.fixture(scope="module")
def pipe(toml_path):
    return load_pipeline(toml_path)


@pytest.fixture(scope="module")
def found(pipe):
    return search_pipeline(pipe, _SETTINGS)


def _exact(p, shares, batch):
    q = set_design_values(p, np.asarray(shares), np.asarray(batch), np.zeros(len(shares)))
    r = evaluate(q, 0.0)
    return float(objective(r, q)), r


def test_rounded_optimum_beats_exhaustive_grid(pipe, found):
    # every split of engine a's 4 devices (1+3, 2+2, 3+1) x batch 1, 2, 4 on each stage
    best = np.inf
    for k in (1, 2, 3):
        for b in itertools.product((1.0, 2.0, 4.0), repeat=3):
            loss, _ = _exact(pipe, (k / 4, 1 - k / 4, 1.0), b)
            best = min(best, loss)
    # objective = -log(throughput per device) + penalties: 0.01 ~ 1% throughput per device
    assert found.objective <= best + 0.01
    loss, r = _exact(
        pipe,
        (found.design.devices[0] / 4, found.design.devices[1] / 4, 1.0),
        found.design.batch_size,
    )
    assert loss == pytest.approx(found.objective, rel=1e-9)
    assert float(r.throughput_per_device) == pytest.approx(
        float(found.result.throughput_per_device), rel=1e-9
    )


def test_rounded_design_is_valid(pipe, found):
    d = found.design
    assert d.devices[0] + d.devices[1] == 4.0 and d.devices[2] == 1.0
    assert all(x >= 1 and float(x).is_integer() for x in d.devices)
    assert all(b >= 1 and float(b).is_integer() for b in d.batch_size)
    assert np.all(np.isfinite(found.start_losses))
    assert found.relaxed_loss <= float(np.max(found.start_losses))


def test_seed_reproducible(pipe, found):
    again = search_pipeline(pipe, _SETTINGS)
    assert again.design == found.design
    assert again.objective == found.objective
    np.testing.assert_array_equal(again.start_losses, found.start_losses)


def test_settings_and_engine_errors(pipe):
    import equinox as eqx

    with pytest.raises(ValueError, match="starts = 0"):
        PipelineSearchSettings(starts=0)
    half = eqx.tree_at(lambda p: p.engines[0].count, pipe, 2.5)
    with pytest.raises(ValueError, match=r"engines\.a\.count = 2\.5"):
        search_pipeline(half, PipelineSearchSettings(starts=1, steps=1))


def test_cli_optimize_pipeline_json(toml_path, capsys):
    rc = main(
        ["optimize", "--pipeline", str(toml_path), "--starts", "4", "--steps", "60"]
        + ["--seed", "3", "--json"]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert {"best", "objective", "wall_s", "relaxed", "settings"} <= set(r)
    b = r["best"]
    for k in ("throughput_per_s", "e2e_latency_s", "ttft_s", "throughput_per_device"):
        assert b[k] > 0
    assert isinstance(b["meets_slo"], bool)
    assert set(b["design"]) == {"s1", "s2", "s3"}
    assert b["design"]["s1"]["devices"] + b["design"]["s2"]["devices"] == 4
    assert set(r["relaxed"]["design"]["s1"]) == {"devices", "batch_size"}


def test_cli_optimize_needs_devices_without_pipeline(capsys):
    assert main(["optimize", "--model", "llama-3.1-8b"]) != 0
    assert "--devices" in capsys.readouterr().err


def test_leaf_names_and_errors(pipe):
    names = pipeline_leaf_names(pipe)
    for n in ("stages.s1.batching.batch_size", "stages.s2.share", "engines.a.count"):
        assert n in names
    assert resolve_pipeline_name(pipe, "stages.s1.batch_size") == "stages.s1.batching.batch_size"
    with pytest.raises(SweepError, match="nope"):
        resolve_pipeline_name(pipe, "stages.nope.share")
    q = set_pipeline_values(pipe, {"engines.a.count": 8.0}, names)
    assert float(q.engines[0].count) == 8.0
    with pytest.raises(SweepError, match="pipeline"):
        load_pipeline_space({"axes": {"arrival_rate_per_s": [1.0]}})


def test_cli_sweep_pipeline_rows(toml_path, tmp_path, pipe):
    out = tmp_path / "rows.csv"
    rc = main(
        ["sweep", "--pipeline", str(toml_path), "--axis", "stages.s1.batch_size=lin:1:4:4"]
        + ["--axis", "engines.a.count=2,4,8", "--output", str(out), "--no-progress", "--json"]
    )
    assert rc == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    for row in (rows[0], rows[7]):
        b, n = float(row["stages.s1.batching.batch_size"]), float(row["engines.a.count"])
        q = set_pipeline_values(pipe, {"stages.s1.batching.batch_size": b, "engines.a.count": n})
        r = evaluate(q, 0.0)
        for k in ("throughput_per_s", "e2e_latency_s", "ttft_s", "throughput_per_device"):
            assert float(row[k]) == pytest.approx(float(getattr(r, k)), rel=1e-6)
        assert float(row["feasible"]) == float(r.feasible)


def test_sweep_space_file_with_pipeline(toml_path, tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text(
        f'pipeline = "{toml_path.name}"\noutputs = ["throughput_per_s"]\n'
        "[axes]\narrival_rate_per_s = [50.0, 100.0]\n"
    )
    (tmp_path / toml_path.name).write_text(toml_path.read_text())
    assert main(["sweep", "--config", str(space), "--no-progress", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["points"] == 2 and r["axes"] == ["arrival_rate_per_s"]


_KV_TOML = """
arrival_rate_per_s = 20.0
[engines.gpu]
hardware = "h100-sxm"
count = 2
[[stages]]
name = "kv"
type = "kv_retrieval"
model = "qwen2.5-0.5b"
prefix_tokens = 4000
hit_rates = { host_dram = 0.8 }
engine = "gpu"
batching = "continuous"
batch_size = 4
[[stages]]
name = "prefill"
type = "prefill"
model = "qwen2.5-0.5b"
input_tokens = 200
engine = "gpu"
batching = "continuous"
batch_size = 4
"""


@pytest.mark.slow
def test_retrieval_choice_is_the_better_of_fetch_and_recompute(tmp_path):
    f = tmp_path / "kv.toml"
    f.write_text(_KV_TOML)
    p = load_pipeline(f)
    res = search_pipeline(p, PipelineSearchSettings(starts=2, steps=30, seed=0))
    d = res.design
    assert d.devices[0] + d.devices[1] == 2.0
    assert d.retrieve_weight[0] in (0.0, 1.0)
    shares = np.asarray(d.devices) / 2.0
    losses = []
    for w in (0.0, 1.0):
        q = set_design_values(p, shares, np.asarray(d.batch_size), np.asarray([w, 0.0]))
        losses.append(float(objective(evaluate(q, 0.0), q)))
    assert res.objective == pytest.approx(min(losses), rel=1e-9)
