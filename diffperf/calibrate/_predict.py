"""Dispatch measured-kernel rows to the op-family predictors (vectorised per family)."""

import importlib

import numpy as np

from ..hardware import Hardware
from ._tables import select_rows


# op -> module (inside diffperf.calibrate) exposing ``predict_rows(hw, cols) -> np.ndarray``.
_PREDICTOR_MODULES: dict[str, str] = {
    "gemm": "_predict_gemm",
    "moe": "_predict_moe",
    "attention_prefill": "_predict_attention",
    "attention_decode": "_predict_attention",
    "mla_prefill": "_predict_attention",
    "mla_decode": "_predict_attention",
    "all_reduce": "_predict_comm",
    "all_gather": "_predict_comm",
    "reduce_scatter": "_predict_comm",
    "all_to_all": "_predict_comm",
    "moe_dispatch": "_predict_comm",
    "moe_combine": "_predict_comm",
    "moe_combine_low_precision": "_predict_comm",
    "moe_prepare": "_predict_comm",
    "memcpy": "_predict_memcpy",
}


def predict_table(hw_for_device, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted latency (s) of every row of a measured table.

    ``hw_for_device`` maps a device name (the ``device`` column) to a :class:`Hardware`, or is
    one Hardware used for every row. Rows are grouped by (device, predictor module); each
    group is one vectorised call.
    """
    n = len(cols["op"])
    out = np.full(n, np.nan)
    devices = cols["device"]
    modules = np.array([_PREDICTOR_MODULES[o] for o in cols["op"]])
    for dev in np.unique(devices):
        hw = hw_for_device if isinstance(hw_for_device, Hardware) else hw_for_device(str(dev))
        for mod in np.unique(modules):
            mask = (devices == dev) & (modules == mod)
            if not mask.any():
                continue
            m = importlib.import_module(f"diffperf.calibrate.{mod}")
            out[mask] = np.asarray(m.predict_rows(hw, select_rows(cols, mask)), dtype=float)
    return out
