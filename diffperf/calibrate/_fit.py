"""Fit a device's efficiency parameters to measured kernel tables.

The fit is a robust regression on ``r = log(predicted / measured)`` over every row of a
measured table, with the same kernel models that ``predict_table`` uses:

- **Parameters** (``FIT_FIELDS``): per efficiency family the fields that are fitted and how
  they stay physical. Fractions (``unit``) are ``sigmoid(θ)`` in (0, 1); positive scales,
  latencies and byte sizes (``pos``) are ``exp(θ)``; factors that are at least 1 (``ge1``) are
  ``1 + exp(θ)``. Structural fields (tile sizes, tile slots, split-k length) are not fitted;
  a field whose prior value is 0 ("feature absent", e.g. no switch reduction) stays 0, except
  the fields of ``START_IF_ABSENT`` (fixed costs, ramp sizes, a hidden-time share), which
  start at a typical value; a field that no training row is sensitive to keeps its prior
  value and is reported as such.
- **Loss**: pseudo-Huber ``δ²(√(1 + (r/δ)²) − 1)`` (quadratic below ``δ``, linear above: a
  wrong row pulls with bounded force), averaged within each (device, op, dtype) group and then
  over groups, so a family with 9,000 rows does not drown one with 500. A weak quadratic pull
  of ``θ`` towards the prior keeps directions the data cannot see where they were.
- **Optimiser**: optax Adam with cosine-decayed step, all steps in one ``lax.scan`` inside one
  jit. Families are fitted in the order gemm, attention, moe, comm, each on its own ops' rows
  and on top of the earlier fits (``FitConfig.joint`` fits them all at once instead); the
  start is the device's current profile (or ``--init-profile``).
- **Held-out split**: by shape group (``shape_groups``: all shape columns but the one a
  table sweeps, e.g. GEMM ``(n, k)`` with every ``m``), stratified per kernel (device, op,
  dtype, implementation, scope), each stratum seeded by the split seed and its name.
- **Uncertainty**: Laplace / M-estimator sandwich at the optimum,
  ``Cov(θ) = H⁻¹ (Σᵢ wᵢ² ψ(rᵢ)² Jᵢ Jᵢᵀ) H⁻¹`` with ``H = Σᵢ wᵢ ψ'(rᵢ) Jᵢ Jᵢᵀ`` (Gauss-Newton)
  and ``J = ∂r/∂θ``, mapped to physical units by the delta method. It treats rows as
  independent, so it measures how well the data pin each parameter, not model-form error;
  ``bootstrap > 0`` adds a resampling estimate instead: the whole fit vmapped over
  shape-group resamples (the spread of refits).
"""

import dataclasses
import math
import time
import zlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..hardware import Hardware
from ..hardware._efficiency import EFFICIENCY_FAMILIES
from . import (
    _predict_attention,
    _predict_comm,
    _predict_gemm,
    _predict_memcpy,
    _predict_moe,
)
from ._predict import predict_table
from ._validate import error_table


class CalibrationError(ValueError):
    """Calibration input that cannot be fitted (no rows for the device, no family to fit)."""


# Efficiency family each op calibrates (its predictor also reads other families: an MoE layer
# uses eff.gemm's per-precision compute fractions, the MLA module its projections' GEMMs).
OP_FAMILY: dict[str, str] = {
    "gemm": "gemm",
    "memcpy": "gemm",
    "attention_prefill": "attention",
    "attention_decode": "attention",
    "mla_prefill": "attention",
    "mla_decode": "attention",
    "moe": "moe",
    "all_reduce": "comm",
    "all_gather": "comm",
    "reduce_scatter": "comm",
    "all_to_all": "comm",
    "moe_dispatch": "comm",
    "moe_combine": "comm",
    "moe_combine_low_precision": "comm",
    "moe_prepare": "comm",
}

_GROUPS_MODULE = {
    "gemm": _predict_gemm,
    "memcpy": _predict_memcpy,
    "attention_prefill": _predict_attention,
    "attention_decode": _predict_attention,
    "mla_prefill": _predict_attention,
    "mla_decode": _predict_attention,
    "moe": _predict_moe,
}

# The column each op's tables sweep inside one shape group (held-out split keeps a group whole).
SWEEP_COLUMN: dict[str, str] = {
    "gemm": "m",
    "memcpy": "bytes",
    "attention_prefill": "seq_len",
    "attention_decode": "kv_len",
    "mla_prefill": "seq_len",
    "mla_decode": "kv_len",
    "moe": "tokens",
    "all_reduce": "message_bytes",
    "all_gather": "message_bytes",
    "reduce_scatter": "message_bytes",
    "all_to_all": "message_bytes",
    "moe_dispatch": "tokens",
    "moe_combine": "tokens",
    "moe_combine_low_precision": "tokens",
    "moe_prepare": "tokens",
}

_U, _P, _G = "unit", "pos", "ge1"

# Fixed costs, ramp sizes and shares that a profile may leave out (0 = not modelled there;
# most profiles are transferred, not fitted) but a fit may switch on: the fit starts them at a
# kernel launch (1 us), a small transfer (100 KB), a per-row time (1 ns), a GEMM k-pace floor
# (3 ns per element: above every measured pace, so it binds at small m and the fit lowers it),
# a padding time (10 ps per row per k), half a quantisation pass, half (a share of
# hidden launch time) or, for the all-to-all channel ceiling, 1e11 B/s (below every measured
# NVLink all-to-all rate, so it binds at the start and the fit raises it to where the data
# put it) instead of keeping them at 0. Rows that do not exercise one (e.g. no fp4
# GEMMs) leave it at 0.
START_IF_ABSENT: dict[tuple[str, str], float] = {
    ("gemm", "scaled_launch_s"): 1e-6,
    ("gemm", "quant_launch_s"): 1e-6,
    ("gemm", "fp4_launch_s"): 1e-6,
    ("gemm", "unaligned_row_k_s"): 1e-11,
    ("gemm", "group_quant_passes"): 0.5,
    ("gemm", "fp4_tile_k_s"): 3e-9,
    ("gemm", "block_tile_k_s"): 3e-9,
    ("moe", "weight_half_bytes"): 1e5,
    ("moe", "block_expert_s"): 1e-7,
    ("moe", "block_act_passes"): 0.5,
    ("comm", "p2p_simple_latency_s"): 1e-6,
    ("comm", "p2p_channel_bw_bytes_per_s"): 1e11,
    ("attention", "mla_module_row_s"): 1e-9,
    ("attention", "mla_prefill_extra_launch_s"): 1e-6,
    ("attention", "mla_module_launch_overlap"): 0.5,
}
FIT_FIELDS: dict[str, dict[str, str]] = {
    "gemm": {
        "compute_eff_bf16": _U,
        "compute_eff_fp8": _U,
        "compute_eff_fp4": _U,
        "compute_eff_int8": _U,
        "compute_eff_fp32": _U,
        "block_scale_eff": _U,
        "unaligned_m_eff": _U,
        "unaligned_row_k_s": _P,
        "wave_tail_share": _U,
        "scaled_wave_tail_share": _U,
        "dequant_eff": _U,
        "mem_eff": _U,
        "mem_half_bytes": _P,
        "k_half_elems": _P,
        "act_quant_passes": _P,
        "group_quant_passes": _P,
        "launch_s": _P,
        "scaled_launch_s": _P,
        "quant_launch_s": _P,
        "fp4_launch_s": _P,
        "fp4_tile_k_s": _P,
        "block_tile_k_s": _P,
    },
    "attention": {
        "prefill_eff_bf16": _U,
        "prefill_eff_fp8": _U,
        "prefill_row_keys": _P,
        "prefill_seq_head_s": _P,
        "prefill_tiles_half": _P,
        "decode_mem_eff": _U,
        "decode_bytes_half": _P,
        "decode_compute_eff": _U,
        "decode_cta_s_bf16kv": _P,
        "decode_cta_s_bf16kv_mha": _P,
        "decode_cta_s_fp8kv": _P,
        "overlap_p": _G,
        "prefill_launch_s": _P,
        "decode_launch_s_bf16kv": _P,
        "decode_launch_s_fp8kv": _P,
        "mla_launch_s": _P,
        "mla_prefill_extra_launch_s": _P,
        "mla_prefill_eff_scale": _P,
        "mla_launch_s_fp8kv": _P,
        "mla_prefill_eff_scale_fp8kv": _P,
        "mla_decode_eff_bf16": _U,
        "mla_decode_eff_fp8": _U,
        "mla_decode_mem_eff": _U,
        "mla_decode_seq_s": _P,
        "mla_decode_head_s": _P,
        "mla_module_fixed_s": _P,
        "mla_module_token_s": _P,
        "mla_module_row_s": _P,
        "mla_module_launch_overlap": _U,
    },
    "moe": {
        "compute_eff": _U,
        "mem_eff": _U,
        "routing_s": _P,
        "permute_passes": _P,
        "imbalance": _G,
        "skew_load_exponent": _P,
        "assign_s": _P,
        "wo_compute_eff": _U,
        "wo_fixed_s": _P,
        "wo_assign_s": _P,
        "weight_half_bytes": _P,
        "act_mem_eff": _U,
        "block_compute_eff": _U,
        "block_expert_s": _P,
        "block_act_passes": _P,
        "k_half_elems": _P,
        "wo_fixed_tokens_half": _P,
    },
    "comm": {
        "base_latency_s": _P,
        "scaleup_latency_factor": _P,
        "scaleout_latency_factor": _P,
        "scaleup_bw_eff": _U,
        "scaleout_bw_eff": _U,
        "small_group_loss": _U,
        "saturation_bytes": _P,
        "saturation_exponent": _P,
        "scaleout_saturation_bytes": _P,
        "allreduce_bw_factor": _P,
        "alltoall_bw_factor": _P,
        "alltoall_small_group_loss": _U,
        "nvls_bw_eff": _U,
        "nvls_latency_s": _P,
        "custom_latency_s": _P,
        "custom_bw_eff": _U,
        "ht_latency_s": _P,
        "ht_bw_eff": _U,
        "ht_per_copy_s": _P,
        "ll_latency_s": _P,
        "ll_bw_eff": _U,
        "ll_per_copy_s": _P,
        "ll_combine_latency_s": _P,
        "combine_bw_factor": _P,
        "ll_combine_bw_factor": _U,
        "p2p_simple_latency_s": _P,
        "p2p_channel_bw_bytes_per_s": _P,
    },
}
# Fields kept fixed (structure of the kernels, not an efficiency): documented for reports.
FIXED_FIELDS: dict[str, tuple[str, ...]] = {
    fam: tuple(f.name for f in dataclasses.fields(cls) if f.name not in FIT_FIELDS.get(fam, {}))
    for fam, cls in EFFICIENCY_FAMILIES.items()
}
# A fraction is kept at most this close to 1 at initialisation (sigmoid(θ) = 1 is θ = inf).
_UNIT_MAX = 0.999


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_efficiency` (all static).

    - ``steps``, ``learning_rate``: Adam steps and peak step (cosine-decayed to 1% of it).
    - ``delta``: pseudo-Huber transition on ``|log(pred/meas)|`` (0.05 ≈ 5%).
    - ``prior_weight``: weight of ``Σ (θ − θ_prior)²`` (keeps unseen directions in place).
    - ``holdout``: fraction of shape groups held out (0 = fit on everything).
    - ``seed``: RNG seed of the held-out split and the bootstrap.
    - ``bootstrap``: number of shape-group resamples for a resampling uncertainty (0 = off).
    - ``families``: families to fit (``None`` = every family present in the input).
    - ``joint``: fit all families at once on all rows; default (``False``) fits them in the
      order gemm, attention, moe, comm, each on its own ops' rows, later ones on top of the
      earlier fits (an MoE layer then uses the GEMM fractions its GEMM rows gave).
    """

    steps: int = 400
    learning_rate: float = 0.05
    delta: float = 0.02
    prior_weight: float = 1e-7
    holdout: float = 0.0
    seed: int = 0
    bootstrap: int = 0
    families: tuple[str, ...] | None = None
    joint: bool = False

    def __post_init__(self):
        if self.steps < 1:
            raise CalibrationError(f"steps = {self.steps} must be >= 1")
        if not self.learning_rate > 0:
            raise CalibrationError(f"learning_rate = {self.learning_rate} must be > 0")
        if not self.delta > 0:
            raise CalibrationError(f"delta = {self.delta} must be > 0")
        if not 0 <= self.holdout < 1:
            raise CalibrationError(f"holdout = {self.holdout} must be in [0, 1)")
        if self.bootstrap < 0:
            raise CalibrationError(f"bootstrap = {self.bootstrap} must be >= 0")
        if self.families is not None:
            bad = [f for f in self.families if f not in FIT_FIELDS]
            if bad:
                raise CalibrationError(
                    f"families {bad} are not efficiency families ({', '.join(FIT_FIELDS)})"
                )


@dataclasses.dataclass(frozen=True)
class FittedParam:
    """One fitted parameter: physical value (SI), prior value, 1-sigma uncertainty."""

    family: str
    name: str
    transform: str
    value: float
    prior: float
    std: float
    bootstrap_std: float | None = None


@dataclasses.dataclass
class CalibrationResult:
    """What :func:`fit_efficiency` returns.

    ``hw``: the fitted Hardware; ``params``: every fitted parameter; ``unconstrained``:
    ``family.field`` names no training row is sensitive to (kept at their prior);
    ``train_mask``: rows used for the fit; ``train_errors`` / ``holdout_errors``: the
    :func:`error_table` rows per (device, op, dtype) of the fitted device;
    ``prior_errors``: the same on all rows before the fit; ``loss_history``: loss per step.
    """

    hw: Hardware
    params: list[FittedParam]
    unconstrained: list[str]
    families: tuple[str, ...]
    train_mask: np.ndarray
    train_errors: list[dict]
    holdout_errors: list[dict]
    prior_errors: list[dict]
    loss_history: np.ndarray
    timings_s: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready summary: per-parameter values and overall train/held-out medians."""

        def overall(rows):
            meds = [r["median_abs_rel_err"] for r in rows if math.isfinite(r["median_abs_rel_err"])]
            return {
                "groups": len(rows),
                "worst_group_median_abs_rel_err": max(meds) if meds else None,
                "median_of_group_medians": float(np.median(meds)) if meds else None,
            }

        return {
            "families": list(self.families),
            "rows_train": int(self.train_mask.sum()),
            "rows_holdout": int((~self.train_mask).sum()),
            "train": overall(self.train_errors),
            "holdout": overall(self.holdout_errors),
            "prior": overall(self.prior_errors),
            "final_loss": float(self.loss_history[-1]),
            "timings_s": self.timings_s,
            "params": [dataclasses.asdict(p) for p in self.params],
            "unconstrained": list(self.unconstrained),
            "train_errors": self.train_errors,
            "holdout_errors": self.holdout_errors,
        }


# ------------------------------------------------------------------------------------------
# shape groups and the held-out split
# ------------------------------------------------------------------------------------------


def shape_groups(cols: dict[str, np.ndarray]) -> np.ndarray:
    """An integer id per row: rows with the same op, static attributes and shape columns
    other than the op's swept column (``SWEEP_COLUMN``) share an id."""
    _, ids = np.unique(shape_group_labels(cols), return_inverse=True)
    return ids


def shape_group_labels(cols: dict[str, np.ndarray]) -> np.ndarray:
    """The label behind :func:`shape_groups` per row: ``device|op|<shape columns>|<attrs>``."""
    from ._tables import OP_COLUMNS

    n = len(cols["op"])
    labels = []
    for i in range(n):
        op = str(cols["op"][i])
        parts = [str(cols["device"][i]), op]
        for c in OP_COLUMNS.get(op, ()):
            if c == SWEEP_COLUMN.get(op):
                continue
            parts.append(repr(cols[c][i]) if c in cols else "")
        for c in ("scope", "model", "implementation", "distribution", "gemm_dtype"):
            if c in cols and c not in OP_COLUMNS.get(op, ()):
                parts.append(str(cols[c][i]))
        labels.append("|".join(parts))
    return np.array(labels)


_STRATUM_COLUMNS = ("device", "op", "dtype", "implementation", "scope")


def holdout_split(cols: dict[str, np.ndarray], fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean train mask holding out ``fraction`` of the shape groups of each kernel.

    A kernel (stratum) is a (device, op, dtype, implementation, scope): held-out rows are
    shapes of a kernel the fit has seen, never the whole of a kernel (e.g. the only DeepEP
    low-latency bf16 combine shape), which would test a kernel the fit never saw. Whole shape
    groups go to one side. A stratum with a single group stays in training. ``fraction = 0``
    keeps every row. Each stratum draws from its own generator, seeded by ``seed`` and the
    stratum's name, so a table's held-out shapes do not depend on which other tables are
    fitted with it.
    """
    n = len(cols["op"])
    train = np.ones(n, dtype=bool)
    if fraction <= 0:
        return train
    gid = shape_groups(cols)
    # blank cells (a column another table brought in) are left out of the name
    present = [np.asarray(cols[c]).astype(str) for c in _STRATUM_COLUMNS if c in cols]
    strata = np.array(["|".join(v for v in vals if v not in ("", "nan")) for vals in zip(*present)])
    for s in np.unique(strata):
        groups = np.unique(gid[strata == s])  # ids ordered like their labels
        if groups.size < 2:
            continue
        k = min(groups.size - 1, max(1, int(round(fraction * groups.size))))
        rng = np.random.default_rng([seed, zlib.crc32(str(s).encode())])
        held = rng.choice(groups, size=k, replace=False)
        train &= ~np.isin(gid, held)
    return train


# ------------------------------------------------------------------------------------------
# parameter transforms
# ------------------------------------------------------------------------------------------


def _to_theta(value: float, transform: str) -> float:
    if transform == _U:
        v = min(max(value, 1e-6), _UNIT_MAX)
        return math.log(v / (1.0 - v))
    if transform == _G:
        return math.log(max(value - 1.0, 1e-6))
    return math.log(value)


def _from_theta(theta, transforms: tuple[str, ...]):
    """Physical values of a θ vector (elementwise by static transform)."""
    out = []
    for i, t in enumerate(transforms):
        x = theta[..., i]
        if t == _U:
            out.append(jax.nn.sigmoid(x))
        elif t == _G:
            out.append(1.0 + jnp.exp(x))
        else:
            out.append(jnp.exp(x))
    return jnp.stack(out, axis=-1)


def _dvalue_dtheta(value: float, transform: str) -> float:
    if transform == _U:
        return value * (1.0 - value)
    if transform == _G:
        return value - 1.0
    return value


def _with_params(hw: Hardware, names: tuple[tuple[str, str], ...], values) -> Hardware:
    return eqx.tree_at(
        lambda h: tuple(getattr(getattr(h.accel.eff, f), n) for f, n in names),
        hw,
        tuple(values[..., i] for i in range(len(names))),
    )


def with_efficiency(hw: Hardware, values: dict[tuple[str, str], float]) -> Hardware:
    """``hw`` with efficiency fields replaced: ``{(family, field): value}`` (SI)."""
    names = tuple(values)
    return _with_params(hw, names, jnp.asarray([values[k] for k in names], dtype=float))


# ------------------------------------------------------------------------------------------
# the fit
# ------------------------------------------------------------------------------------------


def _traced_groups(cols: dict[str, np.ndarray]):
    """``[(row_index, fn(hw) -> latencies)]`` covering every row of ``cols``."""
    ops = cols["op"].astype(str)
    out = []
    comm = np.array([OP_FAMILY.get(o) == "comm" for o in ops])
    for mod in (_predict_gemm, _predict_memcpy, _predict_attention, _predict_moe):
        sel = np.array([_GROUPS_MODULE.get(o) is mod for o in ops])
        if sel.any():
            base = np.flatnonzero(sel)
            sub = {k: v[sel] for k, v in cols.items()}
            out += [(base[idx], fn) for idx, fn in mod.traced_groups(sub)]
    if comm.any():
        base = np.flatnonzero(comm)
        sub = {k: v[comm] for k, v in cols.items()}
        out += [(base[idx], fn) for idx, fn in _predict_comm.traced_groups(sub)]
    return out


def _predict_all(hw: Hardware, groups, n: int):
    pred = jnp.ones(n)
    for idx, fn in groups:
        pred = pred.at[idx].set(fn(hw))
    return pred


def _pseudo_huber(r, delta):
    return delta**2 * (jnp.sqrt(1.0 + (r / delta) ** 2) - 1.0)


def _psi(r, delta):
    """First and second derivative of the pseudo-Huber loss."""
    q = 1.0 + (r / delta) ** 2
    return r / np.sqrt(q), q**-1.5


def _group_weights(cols, mask) -> np.ndarray:
    """Row weights: 1/(rows of its (device, op, dtype) group) / (number of groups), on mask."""
    n = len(cols["op"])
    dt = cols["dtype"] if "dtype" in cols else np.full(n, "", dtype=str)
    key = np.char.add(np.char.add(cols["device"].astype(str), "|"), cols["op"].astype(str))
    key = np.char.add(np.char.add(key, "|"), dt.astype(str))
    w = np.zeros(n)
    keys = np.unique(key[mask])
    for k in keys:
        sel = mask & (key == k)
        w[sel] = 1.0 / sel.sum() / len(keys)
    return w


def _fit_block(hw: Hardware, cols, train, families, config: FitConfig):
    """Fit the parameters of ``families`` to the rows ``cols`` (``train`` mask), jointly.

    Returns ``(fitted_hw, params, unconstrained, loss_history, timings)``.
    """
    n = len(cols["op"])
    meas = np.asarray(cols["latency_s"], dtype=float)
    groups = _traced_groups(cols)

    # candidate parameters: fitted fields of the chosen families whose prior is non-zero, and
    # the fixed costs a profile may leave out (START_IF_ABSENT), started at their start value
    cand: list[tuple[str, str]] = []
    for fam in families:
        mod = getattr(hw.accel.eff, fam)
        for name in FIT_FIELDS[fam]:
            if float(getattr(mod, name)) > 0 or (fam, name) in START_IF_ABSENT:
                cand.append((fam, name))
    transforms = tuple(FIT_FIELDS[f][n_] for f, n_ in cand)
    prior_vals = [float(getattr(getattr(hw.accel.eff, f), n_)) for f, n_ in cand]
    start_vals = [v if v > 0 else START_IF_ABSENT.get(c, v) for v, c in zip(prior_vals, cand)]
    theta0 = np.array([_to_theta(v, t) for v, t in zip(start_vals, transforms)])
    log_meas = jnp.asarray(np.log(meas))

    def residuals(theta, names, trans, base_hw):
        h = _with_params(base_hw, names, _from_theta(theta, trans))
        return jnp.log(_predict_all(h, groups, n)) - log_meas

    # every candidate is fitted; one no training row is sensitive to gets a zero gradient, so
    # Adam leaves it exactly at its prior (reported as unconstrained below)
    names, trans, th0 = tuple(cand), transforms, jnp.asarray(theta0)
    if not names:
        raise CalibrationError(f"no efficiency parameter to fit in families {families}")

    w_train = _group_weights(cols, train)
    delta, prior_w = config.delta, config.prior_weight
    sched = optax.cosine_decay_schedule(config.learning_rate, config.steps, alpha=0.01)
    opt = optax.adam(sched)

    def loss_fn(theta, w):
        r = residuals(theta, names, trans, hw)
        r = jnp.where(w > 0, r, 0.0)  # held-out rows never enter (not even as NaN)
        return jnp.sum(w * _pseudo_huber(r, delta)) + prior_w * jnp.sum((theta - th0) ** 2)

    @jax.jit
    def run(w):
        def step(carry, _):
            theta, state = carry
            val, g = jax.value_and_grad(loss_fn)(theta, w)
            upd, state = opt.update(g, state, theta)
            return (optax.apply_updates(theta, upd), state), val

        (theta, _), hist = jax.lax.scan(step, (th0, opt.init(th0)), None, length=config.steps)
        return theta, hist

    t0 = time.perf_counter()
    theta, hist = run(jnp.asarray(w_train))
    theta_np = np.asarray(theta, dtype=float)
    values = np.asarray(_from_theta(theta, trans), dtype=float)
    t_fit = time.perf_counter() - t0

    # sensitivity and Laplace / sandwich uncertainty at the optimum (float64 linear algebra)
    # the residuals come back as jacfwd's aux output: one compiled call (run eagerly, op by
    # op, the residuals alone took ~40 s for 10^4 rows)
    def r_twice(th):
        r = residuals(th, names, trans, hw)
        return r, r

    jac, r_opt = jax.jit(jax.jacfwd(r_twice, has_aux=True))(jnp.asarray(theta_np))
    jac, r_opt = np.asarray(jac, dtype=float), np.asarray(r_opt, dtype=float)
    sens = np.nanmax(np.abs(jac[train]), axis=0) if train.any() else np.zeros(len(names))
    keep = np.isfinite(sens) & (sens > 1e-6)
    unconstrained = [f"{f}.{n_}" for (f, n_), k in zip(names, keep) if not k]
    # a parameter no row constrains keeps its prior (an absent fixed cost stays 0)
    values = np.where(keep, values, np.asarray(prior_vals, dtype=float))
    std_theta = np.full(len(names), np.nan)
    std_theta[keep] = _sandwich_std(jac[:, keep], r_opt, w_train, delta, prior_w)
    t_unc = time.perf_counter() - t0 - t_fit

    boot_thetas = _bootstrap_thetas(cols, train, config, run) if config.bootstrap > 0 else None

    params = []
    for i, ((fam, name), t) in enumerate(zip(names, trans)):
        if not keep[i]:
            continue
        d = _dvalue_dtheta(values[i], t)
        bstd = None
        if boot_thetas is not None:
            bv = np.asarray(_from_theta(jnp.asarray(boot_thetas), trans))[:, i]
            bstd = float(np.std(bv, ddof=1)) if bv.size > 1 else None
        params.append(
            FittedParam(
                family=fam,
                name=name,
                transform=t,
                value=float(values[i]),
                prior=prior_vals[cand.index((fam, name))],
                std=float(abs(d) * std_theta[i]),
                bootstrap_std=bstd,
            )
        )

    fitted = _with_params(hw, names, jnp.asarray(values))
    return (
        fitted,
        params,
        unconstrained,
        np.asarray(hist, dtype=float),
        {
            "fit": t_fit,
            "uncertainty": t_unc,
        },
    )


def fit_efficiency(
    hw: Hardware, cols: dict[str, np.ndarray], config: FitConfig = FitConfig()
) -> CalibrationResult:
    """Fit ``hw``'s efficiency parameters to the measured rows ``cols`` (one device).

    ``hw`` supplies the peaks, bandwidths and the prior efficiency values (the start of the
    fit); ``cols`` comes from :func:`read_kernel_csv` (all rows are taken to be measured on
    ``hw``). Only the families of the ops present are fitted (``OP_FAMILY``). See the module
    docstring for parameters, loss, split and uncertainty.

    Raises :class:`CalibrationError` for an empty table or a family without rows.
    """
    n = len(cols["op"])
    if n == 0:
        raise CalibrationError("the measured table has no rows")
    ops = [str(o) for o in np.unique(cols["op"])]
    present = tuple(fam for fam in FIT_FIELDS if any(OP_FAMILY[o] == fam for o in ops))
    families = config.families if config.families is not None else present
    missing = [f for f in families if f not in present]
    if missing:
        raise CalibrationError(
            f"families {missing} have no rows in the input (ops present: {', '.join(ops)})"
        )
    if not families:
        raise CalibrationError(f"no efficiency family to fit from ops {', '.join(ops)}")

    train = holdout_split(cols, config.holdout, config.seed)
    if config.joint:
        blocks = [(tuple(families), np.ones(n, dtype=bool))]
    else:
        ops_col = cols["op"].astype(str)
        blocks = [((fam,), np.array([OP_FAMILY[o] == fam for o in ops_col])) for fam in families]
    fitted, params, unconstrained, hists = hw, [], [], []
    timings = {"fit": 0.0, "uncertainty": 0.0}
    from ._tables import select_rows

    for fams, rows in blocks:
        fitted, p, u, h, t = _fit_block(fitted, select_rows(cols, rows), train[rows], fams, config)
        params += p
        unconstrained += u
        hists.append(h)
        for k in timings:
            timings[k] += t[k]
    hist = np.sum(hists, axis=0)
    pred = predict_table(fitted, cols)
    pred0 = predict_table(hw, cols)
    keys = ("device", "op", "dtype")
    train_err = error_table(select_rows(cols, train), pred[train], keys) if train.any() else []
    hold_err = error_table(select_rows(cols, ~train), pred[~train], keys) if (~train).any() else []
    return CalibrationResult(
        hw=fitted,
        params=params,
        unconstrained=unconstrained,
        families=tuple(families),
        train_mask=train,
        train_errors=train_err,
        holdout_errors=hold_err,
        prior_errors=error_table(cols, pred0, keys),
        loss_history=hist,
        timings_s=timings,
    )


def _sandwich_std(jac, r, w, delta, prior_w) -> np.ndarray:
    """1-sigma of θ from the M-estimator sandwich (rows with w = 0 do not count)."""
    ok = (w > 0) & np.all(np.isfinite(jac), axis=1) & np.isfinite(r)
    j, r, w = jac[ok], r[ok], w[ok]
    psi, dpsi = _psi(r, delta)
    h = (j * (w * dpsi)[:, None]).T @ j + 2.0 * prior_w * np.eye(j.shape[1])
    b = (j * ((w * psi) ** 2)[:, None]).T @ j
    try:
        hinv = np.linalg.pinv(h, rcond=1e-12)
    except np.linalg.LinAlgError:
        return np.full(j.shape[1], np.nan)
    cov = hinv @ b @ hinv
    return np.sqrt(np.clip(np.diag(cov), 0.0, None))


def _bootstrap_thetas(cols, train, config: FitConfig, run) -> np.ndarray | None:
    """θ of ``config.bootstrap`` refits, each on a resample (with replacement) of the
    training shape groups; all refits in one vmapped call. Returns a (B, P) array."""
    gid = shape_groups(cols)
    tg = np.unique(gid[train])
    if tg.size < 2:
        return None
    rng = np.random.default_rng(config.seed + 1)
    ws = []
    base = _group_weights(cols, train)
    for _ in range(config.bootstrap):
        counts = np.bincount(rng.choice(tg.size, size=tg.size), minlength=tg.size)
        mult = np.zeros(gid.max() + 1)
        mult[tg] = counts
        w = base * mult[gid]
        ws.append(w / w.sum())
    thetas, _ = jax.vmap(run)(jnp.asarray(np.stack(ws)))
    return np.asarray(thetas, dtype=float)


# ------------------------------------------------------------------------------------------
# output preset
# ------------------------------------------------------------------------------------------


def _toml_float(v: float) -> str:
    s = f"{v:.7g}"
    return s if any(c in s for c in ".en") else s + ".0"


def preset_toml(
    result: CalibrationResult,
    inherit: str,
    name: str,
    provenance: list[str] = (),
    description: str | None = None,
) -> str:
    """Text of a device TOML: ``inherit = "<preset>"`` + ``[efficiency.<family>]`` overrides.

    Every fitted field is written with its prior and 1-sigma uncertainty in a comment; the
    result loads with ``load_hardware(path)`` (and ``--hardware path`` in every command)
    and reproduces ``result.hw``'s predictions. ``provenance`` lines become header comments.
    """
    s = result.summary()
    lines = [f"# {p}" for p in provenance]
    lines += [
        f"# families fitted: {', '.join(result.families)}; rows: {s['rows_train']} train, "
        f"{s['rows_holdout']} held out (by shape group)",
    ]
    for label, rows in (("train", result.train_errors), ("held-out", result.holdout_errors)):
        for r in rows:
            lines.append(
                f"#   {label:8s} {r['op']:>26s} {r['dtype']:>12s}: median |err| "
                f"{100 * r['median_abs_rel_err']:.1f}% over {r['rows']} rows"
            )
    if result.unconstrained:
        lines.append(
            "# not constrained by the data (kept from the inherited profile): "
            + ", ".join(result.unconstrained)
        )
    lines += [
        f"name = {_toml_str(name)}",
        f"inherit = {_toml_str(inherit)}",
    ]
    if description:
        lines.append(f"description = {_toml_str(description)}")
    by_family: dict[str, list[FittedParam]] = {}
    for p in result.params:
        by_family.setdefault(p.family, []).append(p)
    for fam, ps in by_family.items():
        lines += ["", f"[efficiency.{fam}]"]
        for p in ps:
            unc = f" ± {p.std:.2g}" if math.isfinite(p.std) else ""
            if p.bootstrap_std is not None:
                unc += f" (bootstrap ± {p.bootstrap_std:.2g})"
            lines.append(f"{p.name} = {_toml_float(p.value)}  # fitted{unc}; prior {p.prior:.4g}")
    return "\n".join(lines) + "\n"


def _toml_str(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def rows_for_device(
    cols: dict[str, np.ndarray], hw_name: str, device: str | None = None, hardware_arg: str = ""
) -> tuple[dict[str, np.ndarray], str]:
    """The rows of one device: ``device`` if given; else the only device of the table; else
    the rows whose device column names ``hw_name`` (preset aliases allowed).

    Raises :class:`CalibrationError` listing the devices present when none matches.
    """
    from ..hardware._presets import ALIASES
    from ._tables import select_rows

    devs = [str(d) for d in np.unique(cols["device"])]
    if device is None:
        if len(devs) == 1:
            device = devs[0]
        else:
            want = {hw_name.lower(), str(hardware_arg).lower()}
            want |= {ALIASES.get(w, w) for w in list(want)}
            hits = [d for d in devs if ALIASES.get(d.lower(), d.lower()) in want]
            if len(hits) != 1:
                raise CalibrationError(
                    f"the input has devices {devs}; none matches hardware {hw_name!r}: pass "
                    f"--device to choose the rows to fit"
                )
            device = hits[0]
    if device not in devs:
        raise CalibrationError(f"device = {device!r} has no rows; devices: {devs}")
    return select_rows(cols, cols["device"] == device), device
