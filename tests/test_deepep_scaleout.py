"""Scale-out (NIC tier) MoE all-to-all against DeepEP's published H800 + InfiniBand figures.

Data and derivation: tests/data/README.md (deepseek-ai/DeepEP README, H800 with one
ConnectX-7 400 Gb/s NIC per GPU). The hopper profile's scaleout_* parameters were fitted on
these rows (hardware_presets/efficiency/comm.toml).
"""

from pathlib import Path

import numpy as np
import pytest

from diffperf.calibrate import predict_table, read_kernel_csv
from diffperf.hardware import load_hardware


DATA = Path(__file__).parent / "data" / "deepep_h800.csv"


def _rel_err():
    cols = read_kernel_csv(DATA)
    hw = load_hardware("h800")
    pred = predict_table(lambda _dev: hw, cols)
    return cols, pred / cols["latency_s"] - 1.0


@pytest.mark.validation
@pytest.mark.parametrize("impl", ["deepep_ht", "deepep_ll"])
def test_deepep_h800_cross_node_median(impl):
    cols, rel = _rel_err()
    sel = (cols["implementation"] == impl) & (cols["ep"] > 8)
    assert sel.sum() >= 6
    # HT 6.7%, LL 11% median |rel err| over the cross-node rows
    assert np.median(np.abs(rel[sel])) < 0.18


@pytest.mark.validation
def test_deepep_h800_every_row_within_60_percent():
    # worst rows: LL EP8 dispatch (+52%, NVLink on H800) and HT EP8 (-17%); HT EP64 is -1..-5%
    # with DeepSeek's group-limited routing (4 of 8 groups; +27% without it)
    _, rel = _rel_err()
    assert np.all(np.abs(rel) < 0.6)


@pytest.mark.validation
def test_deepep_latency_grows_with_ep_like_the_data():
    # LL dispatch at 128 tokens: 118 us at EP16 -> 194 us at EP256 (x1.64) as more of the
    # top-8 copies leave the node; the model must reproduce the rise within 20%.
    cols, rel = _rel_err()
    pred = (rel + 1.0) * cols["latency_s"]
    sel = (cols["implementation"] == "deepep_ll") & (cols["op"] == "moe_dispatch")
    ep = cols["ep"][sel]
    p, m = pred[sel], cols["latency_s"][sel]
    i16, i256 = np.flatnonzero(ep == 16)[0], np.flatnonzero(ep == 256)[0]
    np.testing.assert_allclose(p[i256] / p[i16], m[i256] / m[i16], rtol=0.2)


@pytest.mark.validation
def test_deepep_ht_ep64_with_group_limited_routing():
    # DeepEP's benchmark routes like DeepSeek-V3 (top-8 experts from 4 of 8 node groups): at
    # EP64 (8 nodes) a token reaches 3.5 remote nodes, not the 4.6 of unrestricted routing,
    # so the HT EP64 rows are within 10% (they were +24-27% before the routing was modelled).
    cols, rel = _rel_err()
    sel = (cols["implementation"] == "deepep_ht") & (cols["ep"] == 64)
    assert sel.sum() == 2
    assert np.all(np.abs(rel[sel]) < 0.10)
