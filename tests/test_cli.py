"""CLI: estimate, kernels, validate; clear errors for bad input."""

import csv
import json

import numpy as np
import pytest

from diffperf.calibrate import TableError, read_kernel_csv
from diffperf.cli import main

from .helpers import shared_data_dir


def _run(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_estimate_json(capsys):
    rc, out, _ = _run(
        capsys,
        [
            "estimate",
            "--model",
            "meta-llama/Llama-3.1-70B",
            "--hardware",
            "h100-sxm",
            "--tp",
            "8",
            "--batch",
            "16",
            "--isl",
            "2048",
            "--osl",
            "128",
            "--json",
        ],
    )
    assert rc == 0
    r = json.loads(out)
    assert r["devices"] == 8 and r["fits"]
    assert 0 < r["tpot_s"] < r["ttft_s"] < r["e2e_latency_s"]
    np.testing.assert_allclose(r["throughput_tok_s"], 16 / r["tpot_s"], rtol=1e-5)
    np.testing.assert_allclose(
        r["throughput_tok_s_per_device"], r["throughput_tok_s"] / 8, rtol=1e-6
    )
    # bf16 70B weights over 8 GPUs: 17.64 GB per device (derived in test_stages)
    np.testing.assert_allclose(r["memory_per_device"]["weight_bytes"], 17_638_096_896, rtol=1e-5)
    for phase in ("prefill", "decode"):
        assert set(r["breakdown"][phase]) >= {"attention_s", "dense_ffn_s", "tp_comm_s"}


def test_estimate_table_output(capsys):
    rc, out, _ = _run(capsys, ["estimate", "--batch", "4", "--isl", "512", "--osl", "64"])
    assert rc == 0
    assert "TPOT" in out and "fits in memory: yes" in out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["estimate", "--model", "llama-3.1-70b"], "does not fit"),
        (["estimate", "--model", "llama-3.1-70b", "--tp", "3"], "plan.tp = 3"),
        (["estimate", "--model", "gpt-5"], "unknown model 'gpt-5'"),
        (["estimate", "--hardware", "h1000"], "hardware='h1000'"),
        (["estimate", "--kv-dtype", "fp7"], "kv_dtype='fp7'"),
    ],
)
def test_estimate_errors(capsys, argv, match):
    rc, _, err = _run(capsys, argv)
    assert rc == 2
    assert match in err
    assert "Traceback" not in err


def test_kernels_and_validate_roundtrip(tmp_path, capsys):
    src = tmp_path / "mixed.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "device",
                "op",
                "dtype",
                "m",
                "n",
                "k",
                "num_devices",
                "message_bytes",
                "implementation",
                "latency_s",
            ]
        )
        w.writerow(["h100-sxm", "gemm", "bf16", 4096, 4096, 4096, "", "", "", 1.6e-4])
        w.writerow(["b200-sxm", "gemm", "fp8", 1, 8192, 8192, "", "", "", 2.0e-5])
        w.writerow(["h100-sxm", "all_reduce", "fp16", "", "", "", 8, 2**27, "nccl", 6.0e-4])
    out = tmp_path / "pred.csv"
    rc, _, _ = _run(capsys, ["kernels", "--input", str(src), "--output", str(out)])
    assert rc == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(float(r["predicted_latency_s"]) > 0 for r in rows)
    # a 4096^3 bf16 GEMM is compute bound: 2*4096^3 = 1.374e11 FLOP at <= 989 TFLOP/s takes
    # >= 139 us; the prediction must be above that floor and within 2x of it
    g = float(rows[0]["predicted_latency_s"])
    assert 2 * 4096**3 / 989.4e12 < g < 2 * 2 * 4096**3 / 989.4e12
    rc, out_txt, _ = _run(capsys, ["validate", "--input", str(src), "--json"])
    assert rc == 0
    groups = json.loads(out_txt)["groups"]
    assert {(g["device"], g["op"]) for g in groups} == {
        ("h100-sxm", "gemm"),
        ("b200-sxm", "gemm"),
        ("h100-sxm", "all_reduce"),
    }


def test_hardware_override(tmp_path, capsys):
    src = tmp_path / "g.csv"
    src.write_text("device,op,dtype,m,n,k,latency_s\nmystery-gpu,gemm,bf16,1,4096,4096,1e-5\n")
    rc, _, err = _run(capsys, ["kernels", "--input", str(src), "--output", str(tmp_path / "o.csv")])
    assert rc == 2 and "mystery-gpu" in err
    rc, _, _ = _run(
        capsys,
        ["kernels", "--input", str(src), "--output", str(tmp_path / "o.csv"), "--hardware", "h200"],
    )
    assert rc == 0


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "device,op,dtype,m,n,k,latency_s\nh100-sxm,gemm,bf16,1,2,3,-1e-5\n",
            r"bad.csv:2: latency_s = -1e-05 must be a positive",
        ),
        (
            "device,op,dtype,m,n,k,latency_s\nh100-sxm,gemm,bf16,1,2,3,1e-5\nh100-sxm,gemm,bf16,1,2,3,\n",
            "bad.csv:3: latency_s = blank must be a positive",
        ),
        ("device,op,dtype,m,n,latency_s\nh100-sxm,gemm,bf16,1,2,1e-5\n", "needs column 'k'"),
        ("device,op,dtype,m,n,k\nh100-sxm,gemm,bf16,1,2,3\n", "missing column 'latency_s'"),
        (
            "device,op,dtype,m,n,k,latency_s\nh100-sxm,gemm,bf16,x,2,3,1e-5\n",
            "bad.csv:2: column 'm'",
        ),
        ("device,op,dtype,m,n,k,latency_s\nh100-sxm,conv2d,bf16,1,2,3,1e-5\n", "op = 'conv2d'"),
        ("device,op,dtype,m,n,k,latency_s\nh100-sxm,gemm,,1,2,3,1e-5\n", "needs 'dtype'"),
        ("", "empty file"),
    ],
)
def test_bad_tables_name_file_and_line(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(TableError, match=match):
        read_kernel_csv(p)


def test_bad_table_via_cli(tmp_path, capsys):
    p = tmp_path / "bad.csv"
    p.write_text("device,op,dtype,m,n,k,latency_s\nh100-sxm,gemm,bf16,1,2,3,-1\n")
    rc, _, err = _run(capsys, ["validate", "--input", str(p)])
    assert rc == 2 and "bad.csv:2" in err


@pytest.mark.validation
def test_kernels_cli_on_shared_tables(tmp_path, capsys):
    data = shared_data_dir()
    if data is None:
        pytest.skip("shared measured data not present")
    files = sorted((data / "kernels").glob("*.csv"))
    argv = ["kernels", "--output", str(tmp_path / "all.csv"), "--json"]
    for f in files:
        argv += ["--input", str(f)]
    rc, out, _ = _run(capsys, argv)
    assert rc == 0
    r = json.loads(out)
    assert r["rows"] > 20000
    assert r["wall_s"] < 60  # vectorised: seconds, not minutes (loose: shared CI cores)


def test_compilation_cache_location(tmp_path, monkeypatch):
    """The console command keeps compiled programs under $DIFFPERF_CACHE_DIR, else
    $XDG_CACHE_HOME/diffperf/jax; 'off' disables it. jax.config.update is recorded, not
    applied, so the test session's own compilation is untouched."""
    import jax

    from diffperf import cli

    calls = []
    monkeypatch.setattr(jax.config, "update", lambda k, v: calls.append((k, v)))
    monkeypatch.setenv("DIFFPERF_CACHE_DIR", "off")
    assert cli.enable_compilation_cache() is None and calls == []
    monkeypatch.delenv("DIFFPERF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    where = cli.enable_compilation_cache()
    assert where == str(tmp_path / "diffperf" / "jax") and (tmp_path / "diffperf" / "jax").is_dir()
    assert ("jax_compilation_cache_dir", where) in calls
    monkeypatch.setenv("DIFFPERF_CACHE_DIR", str(tmp_path / "c"))
    assert cli.enable_compilation_cache() == str(tmp_path / "c")
