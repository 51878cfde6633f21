"""Shared test helpers."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_dir() -> Path | None:
    """The measured-data folder beside the checkout (CI lays shared/ next to it), or None."""
    for cand in (SHARED_DATA, Path(__file__).resolve().parents[1].parent / "shared" / "data"):
        if (cand / "kernels").is_dir():
            return cand
    return None


def tree_allclose(x, y, *, rtol=1e-6, atol=1e-12) -> bool:
    return bool(eqx.tree_equal(x, y, typematch=False, rtol=rtol, atol=atol))


def finite_difference_grad(f, x: float, rel_eps: float | None = None) -> float:
    """Central finite difference of a scalar function at ``x`` with a relative step.

    eps = sqrt(machine eps) * |x| (optimistix tests/helpers.py convention).
    """
    if rel_eps is None:
        rel_eps = float(np.sqrt(np.finfo(np.float64).eps))
    h = rel_eps * max(abs(x), 1.0)
    return float((f(x + h) - f(x - h)) / (2 * h))


def all_finite(tree) -> bool:
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


def assert_median_error_bars(csv_path: Path, bar: float, keys=("device", "op", "dtype")):
    """Predict a measured kernel table with the shipped presets and assert that every group's
    median |pred/meas - 1| is within ``bar`` (devices without a preset are skipped)."""
    from diffperf.calibrate import error_table, predict_table, read_kernel_csv, select_rows
    from diffperf.hardware import PresetError, load_hardware

    cols = read_kernel_csv(csv_path)
    known = []
    for dev in np.unique(cols["device"]):
        try:
            load_hardware(str(dev))
            known.append(dev)
        except PresetError:
            pass
    cols = select_rows(cols, np.isin(cols["device"], known))
    pred = predict_table(lambda d: load_hardware(d), cols)
    for g in error_table(cols, pred, keys):
        label = " ".join(str(g[k]) for k in keys)
        assert g["median_abs_rel_err"] <= bar, (
            f"{label}: median |rel err| {g['median_abs_rel_err']:.3f}"
        )
