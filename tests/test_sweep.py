"""Sweeps: design-space parsing errors, sharded (4 host devices) == single device, CLI JSON."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from diffperf.search._sweep import SweepError, axis_values, load_space, run_sweep


SPACE = """
scheme = "static"
model = "llama-3.1-8b"
hardware = "h100-sxm"
outputs = ["tpot_s", "ttft_s"]
chunk = 8

[deployment]
batch = 4

[workload]
isl_tokens = 1024
osl_tokens = 128
tpot_slo_s = 0.01

[axes]
"scale.hbm_bw" = { logspace = [0.5, 2.0], num = 3 }
"workload.isl_tokens" = [512, 2048]
"deployment.tp" = { values = [1, 2] }
"""


def _write(tmp_path, text, name="space.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_axis_specs():
    np.testing.assert_allclose(axis_values("a", {"logspace": [1.0, 100.0], "num": 3}), [1, 10, 100])
    np.testing.assert_allclose(axis_values("a", {"linspace": [0.0, 1.0], "num": 3}), [0, 0.5, 1])
    np.testing.assert_allclose(axis_values("a", [3, 1]), [3, 1])
    for bad, msg in (
        ({"logspace": [0.0, 1.0], "num": 3}, "positive end"),
        ({"linspace": [0.0, 1.0]}, "num"),
        ({"values": []}, "non-empty"),
        ({"values": [1], "linspace": [0, 1], "num": 2}, "exactly one"),
        ({"values": ["x"]}, "must be a number"),
        ("1:2", "must be a list"),
    ):
        with pytest.raises(SweepError, match=msg):
            axis_values("axes.x", bad)


@pytest.mark.parametrize(
    "edit,msg",
    [
        (lambda s: s.replace('outputs = ["tpot_s", "ttft_s"]', "outputs = [ [ "), "malformed TOML"),
        (lambda s: "colour = 1\n" + s, "unknown key"),
        (lambda s: s.replace('"tpot_s", "ttft_s"', '"latency"'), "'latency' is not a metric"),
        (lambda s: s.replace('"scale.hbm_bw"', '"hardware.hbm_bw"'), "hardware.hbm_bw"),
        (lambda s: s.replace("values = [1, 2]", "values = [1, 3]"), "does not divide"),
        (lambda s: s.replace("values = [1, 2]", "values = [1, 1.5]"), "positive integers"),
        (lambda s: s.replace('model = "llama-3.1-8b"', 'model = "llama-9"'), "unknown model"),
        (lambda s: s.replace("batch = 4", "batch = 4\nmax_batch = 8"), "max_batch"),
        (lambda s: s.replace('scheme = "static"', 'scheme = "fast"'), "'fast'"),
        (lambda s: s[: s.index("[axes]")], r"\[axes\] is missing"),
        (lambda s: s.replace("chunk = 8", "chunk = 0"), "chunk"),
    ],
)
def test_malformed_space_errors_name_file_and_key(tmp_path, edit, msg):
    p = _write(tmp_path, edit(SPACE))
    with pytest.raises(SweepError, match=msg) as e:
        load_space(p)
    assert "space.toml" in str(e.value)


def test_bad_output_suffix_and_missing_pyarrow(tmp_path):
    from diffperf.search._sweep import _Writer, output_format

    with pytest.raises(SweepError, match=r"\.csv or \.parquet"):
        output_format(tmp_path / "out.txt")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(SweepError, match="pyarrow"):
            _Writer(tmp_path / "o.parquet", ["a"], "parquet")


_CHILD = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    from diffperf.cli import main
    assert len(jax.local_devices()) == 4, jax.local_devices()
    sys.exit(main(["sweep", "--config", sys.argv[1], "--output", sys.argv[2], "--json",
                   "--no-progress"]))
    """
)


def test_sharded_over_four_host_devices_equals_single_device(tmp_path):
    space_path = _write(tmp_path, SPACE)
    out4 = tmp_path / "four.csv"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(space_path), str(out4)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)
    for key in ("points", "shape", "axes", "outputs", "devices", "chunks", "feasible", "range"):
        assert key in rep
    assert rep["devices"] == 4 and rep["points"] == 12 and rep["shape"] == [3, 2, 2]
    assert rep["chunks"] == 2  # 12 points in chunks of 8 (the last one padded)

    space = load_space(space_path)
    one = run_sweep(space, tmp_path / "one.csv", collect=True)
    assert one["devices"] == 1 and one["points"] == 12
    a = np.loadtxt(out4, delimiter=",", skiprows=1)
    b = np.loadtxt(tmp_path / "one.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(a, b, rtol=1e-8)
    header = (tmp_path / "one.csv").read_text().splitlines()[0].split(",")
    assert header == [
        "scale.hbm_bw",
        "workload.isl_tokens",
        "deployment.plan.tp",
        "tpot_s",
        "ttft_s",
        "feasible",
    ]
    cols = one["columns"]
    # cartesian order, first axis slowest; TP2 halves the weight bytes each device reads, so
    # its decode step is shorter at every bandwidth and context
    assert list(cols["scale.hbm_bw"][:4]) == [0.5] * 4
    tp1 = cols["deployment.plan.tp"] == 1
    assert np.all(cols["tpot_s"][~tp1] < cols["tpot_s"][tp1])
    # feasibility flag is the TPOT SLO (10 ms) here; TTFT has no SLO and memory fits
    np.testing.assert_array_equal(cols["feasible"], (cols["tpot_s"] <= 0.01).astype(float))


def test_late_distributed_launch_is_a_clear_error(monkeypatch):
    import jax

    from diffperf.search._sweep import maybe_initialize_distributed, multiprocess_launch

    jax.devices()  # the backend is up in this process
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    assert multiprocess_launch()["num_processes"] == 2
    with pytest.raises(SweepError, match="before importing diffperf"):
        maybe_initialize_distributed()
    monkeypatch.setenv("JAX_PROCESS_ID", "first")
    with pytest.raises(SweepError, match="must be integers"):
        multiprocess_launch()


_PROCESS = textwrap.dedent(
    """
    import json, os, sys
    import jax
    jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))  # before importing diffperf
    jax.config.update("jax_enable_x64", True)
    from diffperf.search._sweep import load_space, maybe_initialize_distributed, run_sweep
    assert maybe_initialize_distributed() == (int(sys.argv[2]), 2)
    r = run_sweep(load_space(sys.argv[3]), sys.argv[4])
    print(json.dumps({k: r[k] for k in ("points", "process", "chunks", "output", "devices")}))
    """
)


@pytest.mark.slow
def test_two_processes_split_the_chunks(tmp_path):
    # jax.distributed on localhost: 2 processes x 2 host devices; each takes every other chunk
    # and writes its own part file; together they hold exactly the single-process rows
    import socket

    space_path = _write(tmp_path, SPACE.replace("chunk = 8", "chunk = 4"))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = tmp_path / "out.csv"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS, f"localhost:{port}", str(k), space_path, str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (0, 1)
    ]
    reps = []
    for p in procs:
        so, se = p.communicate(timeout=600)
        assert p.returncode == 0, se[-2000:]
        reps.append(json.loads(so.strip().splitlines()[-1]))
    assert [r["chunks"] for r in reps] == [2, 1] and sum(r["points"] for r in reps) == 12
    parts = [np.loadtxt(r["output"], delimiter=",", skiprows=1) for r in reps]
    got = np.concatenate(parts)
    one = run_sweep(load_space(space_path), tmp_path / "one.csv")
    want = np.loadtxt(one["output"], delimiter=",", skiprows=1)
    key = lambda a: a[np.lexsort(a[:, :3].T)]
    np.testing.assert_allclose(key(got), key(want), rtol=1e-8)


def test_cli_sweep_flags_and_errors(tmp_path, capsys):
    from diffperf.cli import main

    png = tmp_path / "tpot.png"
    argv = ["sweep", "--scheme", "static", "--set", "batch=4", "--no-progress", "--json"]
    argv += ["--axis", "scale.hbm_bw=log:0.5:2:3", "--axis", "workload.isl_tokens=512,2048"]
    assert main([*argv, "--outputs", "tpot_s", "--plot", str(png)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["points"] == 6 and r["shape"] == [3, 2] and r["outputs"] == ["tpot_s"]
    assert r["output"] is None and png.stat().st_size > 0
    assert r["range"]["tpot_s"]["min"] < r["range"]["tpot_s"]["max"]
    for bad, msg in (
        (["--axis", "scale.hbm_bw=log:1:2"], "log:A:B:N"),
        (["--axis", "scale.hbm_bw"], "NAME="),
        (["--axis", "hardware.hbm=1,2"], "hardware.hbm"),
        (["--axis", "scale.flops=1,2", "--output", str(tmp_path / "o.txt")], r"\.csv or"),
    ):
        assert main(["sweep", "--scheme", "static", "--no-progress", *bad]) == 2
        assert msg.replace("\\", "") in capsys.readouterr().err
