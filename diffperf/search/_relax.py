"""Relaxed (continuous) deployment and hardware spaces, and rounding back to valid designs.

**Deployments.** A :class:`RelaxedSpace` is the continuous hull of exactly the discrete space
the grid enumerates (:func:`~diffperf.search.enumerate_grid`, same :class:`GridSpace`, same
valid degrees). Each design is a point of a box of coordinates, every one normalised to
``[0, 1]`` between the smallest and largest value the table holds:

- parallel degrees ``tp, dp, pp, ep`` of each plan, batch limits and AFD's attention TP, FFN
  TP and unit size as ``log2`` (a degree of 4 sits halfway between 2 and 8);
- the prefill:decode split (P/D and AFD) as the fraction of the device budget given to
  prefill instances, and AFD's attention:FFN split as the attention fraction of a unit;
- AFD micro-batches linearly.

Everything else is derived from the budget ``N``: aggregated ``instances = N / (tp dp pp)``,
``moe_tp = tp dp / ep``; P/D ``prefill_instances = f N / devices_p``, ``decode_instances =
(1 - f) N / devices_d``; AFD ``A = r U``, ``F = (1 - r) U``, ``units = (1 - f) N / U``. So
every relaxed point uses exactly ``N`` devices, and a table row maps to its own coordinates
exactly (the round trip is tested).

**Rounding** (:meth:`RelaxedSpace.nearest`): the valid designs nearest a relaxed point, by
Euclidean distance in the normalised coordinates, found among the table's rows with a k-d
tree (built once per space, so rounding costs microseconds instead of a scan of every
design); the optimiser then evaluates these neighbours exactly. Since the rows are exactly
the valid designs, rounding can only land on valid integers (divisors of heads and experts,
plans that use the budget exactly).

**Hardware** (:class:`HardwareSpace`): peak FLOP/s (all precisions scaled together), HBM
bandwidth and capacity, scale-up bandwidth and domain size, NIC bandwidth, each between
bounds in log space, with a discrete resolution (``levels`` geometric points per parameter,
the domain size on integers) that defines the exact space the rounded answer lives in.
"""

import dataclasses
import functools

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._hardware_names import HARDWARE_PARAMS, canonical_hardware_param
from .._numerics import as_float_array
from .._types import FloatScalarLike
from ._grid import GridTable, canonical_scheme


_PLAN = ("tp", "dp", "pp", "ep")


def _coord_names(scheme: str) -> tuple[str, ...]:
    if scheme == "aggregated":
        return (*_PLAN, "max_batch")
    if scheme == "disaggregated":
        return (
            *("prefill_" + k for k in _PLAN),
            *("decode_" + k for k in _PLAN),
            "prefill_max_batch",
            "decode_max_batch",
            "prefill_frac",
        )
    return (
        *("prefill_" + k for k in _PLAN),
        "prefill_max_batch",
        "prefill_frac",
        "unit_devices",
        "attention_frac",
        "attention_tp",
        "ffn_moe_tp",
        "microbatches",
        "decode_batch",
    )


_LINEAR = ("prefill_frac", "attention_frac", "microbatches")


def _coords_from_columns(scheme: str, c: dict, n) -> dict:
    """Raw (un-normalised) coordinates of table rows (numpy arrays of one row per design)."""
    out = {}
    if scheme == "disaggregated":
        out["prefill_frac"] = c["prefill_instances"] * c["prefill_devices"] / n
    elif scheme == "afd":
        unit = c["attention_devices"] + c["ffn_devices"]
        out["prefill_frac"] = c["prefill_instances"] * c["prefill_devices"] / n
        out["unit_devices"] = unit
        out["attention_frac"] = c["attention_devices"] / unit
    for k in _coord_names(scheme):
        if k not in out:
            out[k] = c[k]
    return {
        k: (np.asarray(v, dtype=float) if k in _LINEAR else np.log2(np.asarray(v, dtype=float)))
        for k, v in out.items()
    }


def _columns_from_coords(scheme: str, x: dict, n, max_num_tokens, moe: bool = True) -> dict:
    """Scheme input columns (see ``_grid._INPUT_COLUMNS``) from raw coordinates (jax)."""
    v = {k: (x[k] if k in _LINEAR else jnp.exp2(x[k])) for k in x}
    c: dict = {"max_num_tokens": max_num_tokens}

    def plan(prefix):
        tp, dp, pp, ep = (v[prefix + k] for k in _PLAN)
        c.update(
            {prefix + "tp": tp, prefix + "dp": dp, prefix + "pp": pp, prefix + "ep": ep},
        )
        # dense models: the plans carry ep = moe_tp = 1 (no experts to shard)
        c[prefix + "moe_tp"] = tp * dp / ep if moe else jnp.ones_like(tp)
        return tp * dp * pp

    if scheme == "aggregated":
        dev = plan("")
        c["instances"] = n / dev
        c["max_batch"] = v["max_batch"]
        c["concurrency"] = c["instances"] * c["max_batch"]
        return c
    if scheme == "disaggregated":
        dp_, dd = plan("prefill_"), plan("decode_")
        f = v["prefill_frac"]
        c["prefill_instances"] = f * n / dp_
        c["decode_instances"] = (1.0 - f) * n / dd
        c["prefill_max_batch"] = v["prefill_max_batch"]
        c["decode_max_batch"] = v["decode_max_batch"]
        c["concurrency"] = c["decode_instances"] * c["decode_max_batch"]
        return c
    dp_ = plan("prefill_")
    f, r, u = v["prefill_frac"], v["attention_frac"], v["unit_devices"]
    c["prefill_instances"] = f * n / dp_
    c["prefill_max_batch"] = v["prefill_max_batch"]
    c["attention_devices"] = r * u
    c["ffn_devices"] = (1.0 - r) * u
    c["instances"] = (1.0 - f) * n / u
    c["attention_tp"] = v["attention_tp"]
    c["ffn_moe_tp"] = v["ffn_moe_tp"]
    c["microbatches"] = v["microbatches"]
    c["decode_batch"] = v["decode_batch"]
    c["concurrency"] = c["instances"] * c["attention_devices"] * c["decode_batch"]
    return c


class RelaxedBox(eqx.Module):
    """The jit-facing part of a :class:`RelaxedSpace`: bounds as leaves, names static."""

    scheme: str = eqx.field(static=True)
    names: tuple = eqx.field(static=True)
    lo: FloatScalarLike = eqx.field(converter=as_float_array)
    hi: FloatScalarLike = eqx.field(converter=as_float_array)
    n_devices: FloatScalarLike = eqx.field(converter=as_float_array)
    max_num_tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    moe: bool = eqx.field(static=True, default=True)

    def columns(self, z):
        """Scheme input columns of the normalised point ``z`` (shape ``(dim,)``, in [0, 1])."""
        raw = self.lo + (self.hi - self.lo) * z
        x = {k: raw[i] for i, k in enumerate(self.names)}
        return _columns_from_coords(self.scheme, x, self.n_devices, self.max_num_tokens, self.moe)


@dataclasses.dataclass(frozen=True)
class RelaxedSpace:
    """Continuous hull of one scheme's grid table (module docstring).

    ``box``: the :class:`RelaxedBox` used inside jit; ``rows``: each table row's normalised
    coordinates (``(size, dim)``); ``table``: the :class:`GridTable` itself.
    """

    table: GridTable
    box: RelaxedBox
    rows: np.ndarray

    @classmethod
    def from_table(cls, table: GridTable, n_devices: int) -> "RelaxedSpace":
        if table.size == 0:
            raise ValueError(f"the {table.scheme} space on {n_devices} devices is empty")
        scheme = canonical_scheme(table.scheme)
        raw = _coords_from_columns(scheme, table.columns, float(n_devices))
        names = _coord_names(scheme)
        a = np.stack([raw[k] for k in names], axis=1)
        lo, hi = a.min(axis=0), a.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        rows = (a - lo) / span
        mnt = float(np.asarray(table.columns["max_num_tokens"])[0])
        c = table.columns
        moe = any(
            np.any(np.asarray(c[k]) != 1) for k in c if k.endswith("ep") or k.endswith("moe_tp")
        )
        box = RelaxedBox(scheme, names, lo, hi, float(n_devices), mnt, moe)
        return cls(table, box, rows)

    @property
    def dim(self) -> int:
        return self.rows.shape[1]

    @functools.cached_property
    def float_columns(self) -> dict:
        """The table's columns as float arrays (converted once; rows are gathered from them)."""
        return {k: np.asarray(v, dtype=float) for k, v in self.table.columns.items()}

    @functools.cached_property
    def _codes(self) -> np.ndarray:
        """Each coordinate's values as small integer codes, ``(dim, size)``: comparing codes
        is several times faster than comparing floats over the whole table."""
        out = np.empty((self.dim, len(self.rows)), dtype=np.int32)
        for i in range(self.dim):
            # values a rounding error apart are the same level (rows are normalised floats)
            _, out[i] = np.unique(np.round(self.rows[:, i], 9), return_inverse=True)
        return out

    def axis_neighbours(self, row: int, max_changed: int = 2, cap: int = 2048) -> np.ndarray:
        """Rows that differ from ``row`` in at most ``max_changed`` coordinates (the discrete
        moves along one or two axes of the space, e.g. another batch limit, or another TP with
        the matching instance count), the ``cap`` nearest of them."""
        codes = self._codes
        diff = (codes != codes[:, row, None]).sum(axis=0)
        idx = np.flatnonzero((diff <= max_changed) & (diff > 0))
        if len(idx) > cap:
            d = ((self.rows[idx] - self.rows[row]) ** 2).sum(axis=1)
            idx = idx[np.argsort(d, kind="stable")[:cap]]
        return idx

    @functools.cached_property
    def _tree(self):
        """k-d tree over the rows (built once per space; queries are logarithmic in size)."""
        from scipy.spatial import cKDTree

        return cKDTree(self.rows)

    def nearest(self, z: np.ndarray, k: int) -> np.ndarray:
        """Indices of the ``k`` table rows nearest each point of ``z`` (``(m, dim)``), sorted
        by distance: ``(m, min(k, size))``."""
        z = np.atleast_2d(np.asarray(z, dtype=float))
        k = min(int(k), len(self.rows))
        _, idx = self._tree.query(z, k=k)
        return np.asarray(idx, dtype=np.int64).reshape(len(z), k)


# --------------------------------------------------------------------------------------------
# hardware as a variable
# --------------------------------------------------------------------------------------------

# default bounds (SI): a box around today's accelerators with room on both sides
DEFAULT_HARDWARE_BOUNDS = {
    "flops": (0.25e15, 8e15),  # dense BF16 FLOP/s (A100 0.31, B200 2.25 PFLOP/s)
    "hbm_bandwidth": (1e12, 32e12),  # bytes/s (A100 2.0, B200 8 TB/s)
    "hbm_capacity": (40e9, 640e9),  # bytes (A100 80, MI355X 288 GB)
    "scaleup_bandwidth": (100e9, 3.6e12),  # bytes/s per direction (NVLink5 0.9 TB/s)
    "domain_size": (4.0, 256.0),  # devices (HGX 8, NVL72, TPU pod slice 256)
    "nic_bandwidth": (12.5e9, 200e9),  # bytes/s (ConnectX-7 50 GB/s)
}
HARDWARE_UNITS = {
    "flops": ("bf16_tflops", 1e12),
    "hbm_bandwidth": ("hbm_bandwidth_gb_per_s", 1e9),
    "hbm_capacity": ("hbm_capacity_gb", 1e9),
    "scaleup_bandwidth": ("scaleup_bandwidth_gb_per_s", 1e9),
    "domain_size": ("domain_size", 1.0),
    "nic_bandwidth": ("nic_bandwidth_gb_per_s", 1e9),
}


def hardware_value(hw, name: str):
    """The current SI value of hardware parameter ``name`` of ``hw``."""
    a, f = hw.accel, hw.fabric
    return {
        "flops": a.peak_bf16_flop_per_s,
        "hbm_bandwidth": a.hbm.bw_bytes_per_s,
        "hbm_capacity": a.hbm.capacity_bytes,
        "scaleup_bandwidth": f.scaleup_bw_bytes_per_s,
        "domain_size": f.scaleup_domain_size,
        "nic_bandwidth": f.scaleout_bw_bytes_per_s,
    }[name]


_PEAKS = (
    "peak_bf16_flop_per_s",
    "peak_fp8_flop_per_s",
    "peak_fp4_flop_per_s",
    "peak_int8_flop_per_s",
    "peak_fp32_flop_per_s",
)


def with_hardware_values(hw, names: tuple, values):
    """``hw`` with each parameter of ``names`` set to ``values[i]`` (SI; traced allowed).

    ``flops`` sets the BF16 peak and scales every other precision's peak by the same factor
    (the precision ratios of the base device are kept).
    """
    for i, name in enumerate(names):
        v = values[i]
        if name == "flops":
            base = jnp.asarray(hw.accel.peak_bf16_flop_per_s, dtype=float)
            s = v / base
            for p in _PEAKS:
                hw = eqx.tree_at(lambda h, p=p: getattr(h.accel, p), hw, getattr(hw.accel, p) * s)
        elif name == "hbm_bandwidth":
            hw = eqx.tree_at(lambda h: h.accel.hbm.bw_bytes_per_s, hw, as_float_array(v))
        elif name == "hbm_capacity":
            hw = eqx.tree_at(lambda h: h.accel.hbm.capacity_bytes, hw, as_float_array(v))
        elif name == "scaleup_bandwidth":
            hw = eqx.tree_at(lambda h: h.fabric.scaleup_bw_bytes_per_s, hw, as_float_array(v))
        elif name == "domain_size":
            hw = eqx.tree_at(lambda h: h.fabric.scaleup_domain_size, hw, as_float_array(v))
        elif name == "nic_bandwidth":
            hw = eqx.tree_at(lambda h: h.fabric.scaleout_bw_bytes_per_s, hw, as_float_array(v))
        else:
            raise ValueError(f"hardware parameter {name!r} must be one of {HARDWARE_PARAMS}")
    return hw


@dataclasses.dataclass(frozen=True)
class HardwareSpace:
    """Hardware parameters searched, their bounds (SI) and discrete resolution.

    ``levels[i]``: the sorted exact values parameter ``i`` may take (geometric between the
    bounds; the domain size on distinct integers). The exact space has
    ``prod(len(levels[i]))`` hardware points.
    """

    names: tuple
    lo: np.ndarray
    hi: np.ndarray
    levels: tuple

    @classmethod
    def make(cls, names, bounds: dict | None = None, resolution: int = 32) -> "HardwareSpace":
        """Parameters ``names`` with ``bounds`` ``{name: (lo, hi)}`` (SI; default
        :data:`DEFAULT_HARDWARE_BOUNDS`) and ``resolution`` levels each."""
        names = tuple(dict.fromkeys(canonical_hardware_param(n) for n in names))
        bounds = {canonical_hardware_param(k): v for k, v in (bounds or {}).items()}
        bounds = {**DEFAULT_HARDWARE_BOUNDS, **bounds}
        if int(resolution) < 2:
            raise ValueError(f"hardware resolution = {resolution} must be >= 2 levels")
        los, his, levels = [], [], []
        for n in names:
            if n not in HARDWARE_PARAMS:
                raise ValueError(
                    f"hardware parameter {n!r} must be one of {', '.join(HARDWARE_PARAMS)}"
                )
            lo, hi = (float(b) for b in bounds[n])
            if not (0 < lo < hi < float("inf")):
                raise ValueError(f"bounds of {n} = ({lo:g}, {hi:g}) must satisfy 0 < lo < hi")
            lev = np.geomspace(lo, hi, int(resolution))
            if n == "domain_size":
                lev = np.unique(np.round(lev))
                lo, hi = float(lev[0]), float(lev[-1])
            los.append(lo)
            his.append(hi)
            levels.append(lev)
        return cls(names, np.array(los), np.array(his), tuple(levels))

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        return int(np.prod([len(v) for v in self.levels])) if self.names else 1

    def values(self, z):
        """SI values of normalised point ``z`` (log-space between the bounds; jax or numpy)."""
        lo, hi = jnp.log(jnp.asarray(self.lo)), jnp.log(jnp.asarray(self.hi))
        return jnp.exp(lo + (hi - lo) * z)

    def normalise(self, values) -> np.ndarray:
        v = np.log(np.asarray(values, dtype=float))
        lo, hi = np.log(self.lo), np.log(self.hi)
        return (v - lo) / (hi - lo)

    def bracket(self, z: np.ndarray) -> np.ndarray:
        """Level indices of the ``2^dim`` corners of the level cell holding ``z`` (``(m, dim)``)."""
        z = np.asarray(z, dtype=float)
        v = np.asarray(self.values(z))
        per = []
        for i, lev in enumerate(self.levels):
            j = int(np.clip(np.searchsorted(lev, v[i]), 1, len(lev) - 1))
            per.append(sorted({j - 1, j}))
        grids = np.meshgrid(*per, indexing="ij")
        return np.stack([g.reshape(-1) for g in grids], axis=1)

    def neighbours(self, idx: np.ndarray) -> np.ndarray:
        """Level indices within one level of ``idx`` in every parameter (``3^dim`` or fewer)."""
        per = []
        for i, lev in enumerate(self.levels):
            per.append(sorted({max(idx[i] - 1, 0), idx[i], min(idx[i] + 1, len(lev) - 1)}))
        grids = np.meshgrid(*per, indexing="ij")
        return np.stack([g.reshape(-1) for g in grids], axis=1)

    def level_values(self, idx: np.ndarray) -> np.ndarray:
        """SI values of level indices ``idx`` (``(m, dim)``)."""
        idx = np.atleast_2d(idx)
        return np.stack([self.levels[i][idx[:, i]] for i in range(self.dim)], axis=1)
