"""The e2e served-runs reader and predictor (TensorRT-LLM, H100, Llama-3.1-8B table)."""

import numpy as np
import pytest

from diffperf.deploy import ServedRunsError, predict_served_runs, read_served_csv

from .helpers import shared_data_dir


HEADER = (
    "system,model_path,mode,precision,isl_tokens,osl_tokens,batch_size,tp_size,pp_size,"
    "attention_dp_size,moe_tp_size,moe_ep_size,concurrency,ttft_ms,tpot_ms"
)


def _write(tmp_path, rows):
    p = tmp_path / "runs.csv"
    p.write_text("\n".join([HEADER, *rows]) + "\n")
    return p


def test_reader_errors_name_file_line_and_column(tmp_path):
    p = _write(tmp_path, ["h100-sxm,meta-llama/Llama-3.1-8B-Instruct,agg,,1024,x,8,1,1,,1,1,8,1,1"])
    with pytest.raises(ServedRunsError, match=r"runs.csv:2: column 'osl_tokens'"):
        read_served_csv(p)
    q = tmp_path / "bad.csv"
    q.write_text("system,isl_tokens\nh100-sxm,1\n")
    with pytest.raises(ServedRunsError, match=r"bad.csv:1: missing column"):
        read_served_csv(q)


def test_predict_small_table_and_unknown_quant(tmp_path):
    rows = [
        "h100-sxm,meta-llama/Llama-3.1-8B-Instruct,agg,,1024,128,8,1,1,,1,1,8,191,7.9",
        # bf16 = the checkpoint's format: same static structure as the validation table, so
        # both tests share one compiled predictor
        "h100-sxm,meta-llama/Llama-3.1-8B-Instruct,agg,bf16,2048,256,32,2,1,,1,1,32,167,9.7",
    ]
    cols = read_served_csv(_write(tmp_path, rows))
    ttft, tpot = predict_served_runs(cols)
    assert ttft.shape == tpot.shape == (2,)
    assert np.all(np.isfinite(ttft)) and np.all(ttft > 0) and np.all(tpot > 0)
    # 8 clients, TP1, bf16: TPOT near the batch-8 decode step (measured 7.9 ms)
    assert 5e-3 < tpot[0] < 11e-3
    cols["precision"] = np.array(["int3", ""])
    with pytest.raises(ServedRunsError, match="precision"):
        predict_served_runs(cols)


@pytest.mark.validation
def test_e2e_llama31_8b_h100_bars():
    data = shared_data_dir()
    if data is None or not (data / "e2e" / "served_h100_llama31_8b.csv").exists():
        pytest.skip("shared measured data not available")
    cols = read_served_csv(data / "e2e" / "served_h100_llama31_8b.csv")
    ttft, tpot = predict_served_runs(cols)
    e_ttft = np.abs(ttft / (cols["ttft_ms"] * 1e-3) - 1.0)
    e_tpot = np.abs(tpot / (cols["tpot_ms"] * 1e-3) - 1.0)
    assert np.median(e_tpot) <= 0.20, np.median(e_tpot)
    assert np.median(e_ttft) <= 0.35, np.median(e_ttft)
