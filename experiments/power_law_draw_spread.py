"""How far one draw of the skewed MoE workload sits from its expectation, and the error that
alone leaves to a model of the expected latency on the measured power-law rows.

Run: ``python -m experiments.power_law_draw_spread [--draws 1000] [--seed 0]`` (~10 s on
2 cores). Prints one JSON object.

The ``power_law_1.2`` rows of ``calibration_data/kernels/moe.csv`` are each ONE draw of
aiconfigurator's synthetic workload (expert loads drawn from ``p(x) ∝ x^-1.2``, normalised
to the ``T·k`` assignments, contiguous expert blocks per rank, the busiest rank timed; see
:func:`diffperf.ops._moe.busiest_rank_load`). The model predicts the latency at the
expected busiest-rank load. For every power-law row this script

1. draws the busiest rank's load ``λ_j`` ``--draws`` times from that workload (numpy, the
   rounding to whole rows left out) and takes ``ρ_j = λ_j / mean(λ)``;
2. takes the elasticity of the row's latency to that load, ``ε = ∂ ln t / ∂ ln λ``, two
   ways: from the measurements, ``ln(t_power_law / t_balanced) / ln E[λ]`` against the
   balanced row of the same shape and token count (clipped to [0, 1]; 1 for a layer bound by
   the busiest rank's rows, 0 for one bound by weights and fixed costs), and from the
   calibrated model (``jax.grad`` through ``moe_layer_cost``'s ``skew_load``);
3. so a model exact in expectation is off by ``ρ_j^ε − 1`` on draw ``j``.

Per (device, dtype) it reports, with the measured elasticity: for the power-law rows whose
latency follows the load (measured ``ε ≥ 0.25``: EP ≥ 8 at a few hundred tokens and more),
the median over rows of the draw's typical error ``median_j |ρ_j^ε − 1|`` (``row_noise``)
next to the calibrated preset's median |relative error| on the same rows
(``calibrated``); and for the whole (device, moe, dtype) group, the median over draws of the
group median (``group_floor``: more than half of a group's rows do not depend on the load,
so it is ~0) next to the calibrated group median. Both elasticities' medians are reported.
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from diffperf.calibrate import predict_table, read_kernel_csv, select_rows
from diffperf.calibrate._predict_moe import _dtype_groups, _row_time, sample_busiest_rank_load
from diffperf.hardware import load_hardware


ROOT = Path(__file__).resolve().parent.parent
DEVICES = ("h100-sxm", "b200-sxm")


def elasticities(hw, dtype: str, args) -> np.ndarray:
    """``∂ ln t / ∂ ln λ`` of each row at its expected busiest-rank load ``λ = args[8]``."""

    def log_t(log_lam, *a):
        return jnp.log(_row_time(hw, dtype, *a[:8], jnp.exp(log_lam)))

    g = jax.jit(jax.vmap(jax.grad(log_t)))
    a = [jnp.asarray(x) for x in args]
    return np.asarray(g(jnp.log(a[8]), *a[:8]), dtype=float)


def measured_elasticities(cols, idx, args) -> np.ndarray:
    """``ln(t_power_law / t_balanced) / ln E[λ]`` per power-law row (0 where no balanced twin
    or ``E[λ] = 1``), clipped to [0, 1]; 0 for balanced rows."""
    lat = np.asarray(cols["latency_s"], dtype=float)[idx]
    model = np.asarray(cols["model"]).astype(str)[idx]
    skew, lam = args[7], args[8]
    key = lambda i: (model[i], *(float(args[c][i]) for c in (0, 5, 6)))  # tokens, tp, ep
    balanced = {key(i): lat[i] for i in np.flatnonzero(skew == 0.0)}
    eps = np.zeros(len(idx))
    for i in np.flatnonzero(skew > 0.0):
        twin = balanced.get(key(i))
        if twin is not None and lam[i] > 1.0 + 1e-9:
            eps[i] = np.clip(np.log(lat[i] / twin) / np.log(lam[i]), 0.0, 1.0)
    return eps


def device_report(device: str, draws: int, seed: int) -> list[dict]:
    cols = read_kernel_csv(ROOT / "calibration_data" / "kernels" / "moe.csv")
    cols = select_rows(cols, cols["device"] == device)
    hw = load_hardware(f"{device}-calibrated")
    rel = predict_table(hw, cols) / np.asarray(cols["latency_s"], dtype=float) - 1.0
    rng = np.random.default_rng(seed)
    out = []
    for dtype, idx, args in _dtype_groups(cols):
        skew = args[7]
        pl = skew > 0.0
        if not pl.any():
            continue
        eps_model = elasticities(hw, dtype, args)
        eps = measured_elasticities(cols, idx, args)
        t, _, _, e, k, _, ep, _ = args[:8]
        noise = np.zeros((draws, len(idx)))  # balanced rows: no draw noise
        for i in np.flatnonzero(pl):
            lam = sample_busiest_rank_load(t[i], k[i], e[i], ep[i], skew[i], draws, rng)
            noise[:, i] = np.abs((lam / lam.mean()) ** eps[i] - 1.0)
        sens = pl & (eps >= 0.25)
        err = np.abs(rel[idx])
        out.append(
            {
                "device": device,
                "dtype": dtype,
                "rows": len(idx),
                "power_law_rows": int(pl.sum()),
                "load_sensitive_rows": int(sens.sum()),
                "median_elasticity_measured": float(np.median(eps[sens])) if sens.any() else None,
                "median_elasticity_model": float(np.median(eps_model[sens]))
                if sens.any()
                else None,
                "row_noise": float(np.median(np.median(noise[:, sens], axis=0)))
                if sens.any()
                else None,
                "calibrated": float(np.median(err[sens])) if sens.any() else None,
                "group_floor": float(np.median(np.median(noise, axis=1))),
                "group_calibrated": float(np.median(err)),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.draws < 2:
        ap.error(f"--draws = {args.draws} must be >= 2")
    rep = [r for d in DEVICES for r in device_report(d, args.draws, args.seed)]
    print(json.dumps({"draws": args.draws, "seed": args.seed, "groups": rep}, indent=1))


if __name__ == "__main__":
    main()
