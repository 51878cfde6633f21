"""Load hardware presets (TOML, human units) into Hardware pytrees (SI units).

File format (``hardware_presets/devices/<name>.toml``)::

    name = "h100-sxm"            # required
    kind = "gpu"                 # gpu | tpu | asic | cpu
    efficiency_profile = "hopper"  # section of hardware_presets/efficiency/<family>.toml
    inherit = "h100-sxm"         # optional: start from another preset, override what follows
    [compute]   bf16_tflops, fp8_tflops, fp4_tflops, int8_tops, fp32_tflops   (dense peaks)
    [memory]    hbm_capacity_gb, hbm_bandwidth_gb_per_s, hbm_latency_us, usable_fraction,
                host_capacity_gb, host_bandwidth_gb_per_s, host_latency_us
    [scale_up]  domain_size, bandwidth_gb_per_s (per device, per direction), latency_us
    [scale_out] nic_bandwidth_gb_per_s (per device, per direction), latency_us,
                oversubscription
    [power]     tdp_w
    [cost]      price_usd_per_hour
    [efficiency.<family>]  optional overrides of the profile's fitted parameters (SI units,
                           the names of the efficiency classes' fields)

GB = 1e9 bytes, TFLOPS = 1e12 FLOP/s, us = 1e-6 s. A peak of 0 means "not supported".
"""

import dataclasses
import math
import re
import tomllib
from pathlib import Path

from .._resources import presets_dir
from ._accelerator import Accelerator, Fabric, Hardware, MemoryTier
from ._efficiency import EFFICIENCY_FAMILIES, Efficiency


class PresetError(ValueError):
    """A hardware preset is unknown, malformed or has an invalid value."""


# (section, key) -> (SI multiplier, may be zero)
_SCHEMA: dict[tuple[str, str], tuple[float, bool]] = {
    ("compute", "bf16_tflops"): (1e12, False),
    ("compute", "fp8_tflops"): (1e12, True),
    ("compute", "fp4_tflops"): (1e12, True),
    ("compute", "int8_tops"): (1e12, True),
    ("compute", "fp32_tflops"): (1e12, False),
    ("memory", "hbm_capacity_gb"): (1e9, False),
    ("memory", "hbm_bandwidth_gb_per_s"): (1e9, False),
    ("memory", "hbm_latency_us"): (1e-6, True),
    ("memory", "usable_fraction"): (1.0, False),
    ("memory", "host_capacity_gb"): (1e9, True),
    ("memory", "host_bandwidth_gb_per_s"): (1e9, True),
    ("memory", "host_latency_us"): (1e-6, True),
    ("scale_up", "domain_size"): (1.0, False),
    ("scale_up", "bandwidth_gb_per_s"): (1e9, True),
    ("scale_up", "latency_us"): (1e-6, True),
    ("scale_out", "nic_bandwidth_gb_per_s"): (1e9, True),
    ("scale_out", "latency_us"): (1e-6, True),
    ("scale_out", "oversubscription"): (1.0, False),
    ("power", "tdp_w"): (1.0, False),
    ("cost", "price_usd_per_hour"): (1.0, True),
}
_TOP_KEYS = {"name", "kind", "efficiency_profile", "inherit", "description", "efficiency"}
_KINDS = ("gpu", "tpu", "asic", "cpu")


def list_presets() -> list[str]:
    """Names of the shipped hardware presets."""
    return sorted(p.stem for p in (presets_dir() / "devices").glob("*.toml"))


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{path}: malformed TOML: {e}") from None
    except OSError as e:
        raise PresetError(f"{path}: cannot read hardware file: {e.strerror}") from None


# Other spellings of the shipped presets (device columns of measured tables, vendor names).
ALIASES: dict[str, str] = {
    "h100": "h100-sxm",
    "h100_sxm": "h100-sxm",
    "h100-sxm5": "h100-sxm",
    "h800-sxm": "h800",
    "h200": "h200-sxm",
    "h200_sxm": "h200-sxm",
    "b200": "b200-sxm",
    "b200_sxm": "b200-sxm",
    "gb200-sxm": "gb200",
    "gb200-nvl72": "gb200",
    "gb200_sxm": "gb200",
    "a100": "a100-sxm",
    "a100-sxm4": "a100-sxm",
    "a100_sxm": "a100-sxm",
    "tpu-v5p": "tpu-v5p",
    "v5p": "tpu-v5p",
    "v6e": "tpu-v6e",
    "trillium": "tpu-v6e",
    "gaudi-3": "gaudi3",
    "xeon": "xeon-8480",
    "spr": "xeon-8480",
}


def _resolve(name_or_path: str | Path) -> Path:
    if isinstance(name_or_path, str) and name_or_path.lower() in ALIASES:
        name_or_path = ALIASES[name_or_path.lower()]
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise PresetError(f"hardware file {str(p)!r} does not exist")
        return p
    cand = presets_dir() / "devices" / f"{name_or_path}.toml"
    if cand.exists():
        return cand
    raise PresetError(
        f"hardware={str(name_or_path)!r} is neither a preset nor a TOML file; presets: "
        f"{', '.join(list_presets())}"
    )


def _merged_raw(path: Path, depth: int = 0) -> dict:
    raw = _read_toml(path)
    parent = raw.get("inherit")
    if parent is None:
        return raw
    if depth > 8:
        raise PresetError(f"{path}: 'inherit' chain is longer than 8 (a cycle?)")
    base = _merged_raw(_resolve(parent), depth + 1)
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in raw.items():
        if k == "inherit":
            continue
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            if k == "efficiency":
                eff = {fk: dict(fv) for fk, fv in merged[k].items()}
                for fk, fv in v.items():
                    eff.setdefault(fk, {}).update(fv)
                merged[k] = eff
            else:
                merged[k].update(v)
        else:
            merged[k] = v
    return merged


def _number(path: Path, where: str, value, may_be_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PresetError(f"{path}: {where} = {value!r} must be a number")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not may_be_zero):
        need = "non-negative" if may_be_zero else "positive"
        raise PresetError(f"{path}: {where} = {value!r} must be a finite {need} number")
    return v


# Efficiency fractions (``*_eff``, ``*_eff_<precision>``) divide a peak: they must lie in
# (0, 1]. A 0 would make the op free (the cost functions divide safely), not infinitely slow.
# nvls_bw_eff = 0 means "no in-switch reduction on this fabric"; the shares of hidden time
# (mla_module_launch_overlap), the partial wave's share of a whole wave (wave_tail_share) and
# the small-group bandwidth losses (eff·(1 - loss/g): above 1 a 2-GPU group would get a
# negative bandwidth) lie in [0, 1].
_FRACTION = re.compile(r"_eff(_[a-z0-9]+)?$")
_FRACTION_MAY_BE_ZERO = frozenset(
    {
        "nvls_bw_eff",
        "mla_module_launch_overlap",
        "small_group_loss",
        "alltoall_small_group_loss",
        "wave_tail_share",
        "scaled_wave_tail_share",
    }
)
# Kernel structure that a cost divides by (tile padding, waves, split-k), and the bandwidth
# factors of one collective relative to another (``*_bw_factor``; 0 would make it free):
# strictly positive. The LL combine's factor is a fraction of its dispatch's bandwidth.
_POSITIVE_STRUCTURE = frozenset(
    {
        "tile_m_elems",
        "tile_n_elems",
        "num_tile_slots",
        "split_k_elems",
        "wo_tile_m_elems",
        "wo_tile_m_large_elems",
    }
)
_POSITIVE_FACTOR = re.compile(r"_bw_factor$")
_FRACTION_NAMES = frozenset({"ll_combine_bw_factor"})


def _efficiency_value(path: Path, family: str, name: str, value) -> float:
    where = f"efficiency.{family}.{name}"
    v = _number(path, where, value, may_be_zero=True)
    fraction = _FRACTION.search(name) and "eff_scale" not in name
    if fraction or name in _FRACTION_MAY_BE_ZERO or name in _FRACTION_NAMES:
        if v > 1 or (v == 0 and name not in _FRACTION_MAY_BE_ZERO):
            low = "[0" if name in _FRACTION_MAY_BE_ZERO else "(0"
            raise PresetError(f"{path}: {where} = {value!r} must be a fraction in {low}, 1]")
    if (name in _POSITIVE_STRUCTURE or _POSITIVE_FACTOR.search(name)) and v == 0:
        raise PresetError(f"{path}: {where} = {value!r} must be a finite positive number")
    if name == "overlap_p" and v < 1:  # p-norm of two legs: 1 = in series, larger = overlap
        raise PresetError(f"{path}: {where} = {value!r} must be a p-norm exponent >= 1")
    return v


def efficiency_profile(profile: str, path: Path | None = None) -> dict[str, dict[str, float]]:
    """Raw fitted parameters of an efficiency profile, per family (SI units)."""
    out: dict[str, dict[str, float]] = {}
    for family in EFFICIENCY_FAMILIES:
        fpath = presets_dir() / "efficiency" / f"{family}.toml"
        table = _read_toml(fpath)
        if profile not in table:
            where = f"{path}: " if path else ""
            raise PresetError(
                f"{where}efficiency_profile = {profile!r} has no section in {fpath.name}; "
                f"profiles: {', '.join(sorted(table))}"
            )
        out[family] = dict(table[profile])
    return out


def _build_efficiency(path: Path, profile: str, overrides: dict) -> Efficiency:
    params = efficiency_profile(profile, path)
    if not isinstance(overrides, dict):
        raise PresetError(f"{path}: [efficiency] must be a table of [efficiency.<family>]")
    for family, table in overrides.items():
        if family not in EFFICIENCY_FAMILIES:
            raise PresetError(
                f"{path}: [efficiency.{family}] is not an efficiency family; families: "
                f"{', '.join(EFFICIENCY_FAMILIES)}"
            )
        if not isinstance(table, dict):
            raise PresetError(f"{path}: efficiency.{family} must be a table")
        params[family].update(table)
    built = {}
    for family, cls in EFFICIENCY_FAMILIES.items():
        names = [f.name for f in dataclasses.fields(cls)]
        got = params[family]
        unknown = sorted(set(got) - set(names))
        if unknown:
            raise PresetError(
                f"{path}: efficiency.{family} has unknown key(s) {unknown}; keys: {names}"
            )
        missing = [n for n in names if n not in got]
        if missing:
            raise PresetError(f"{path}: efficiency.{family} is missing key(s) {missing}")
        vals = {n: _efficiency_value(path, family, n, got[n]) for n in names}
        built[family] = cls(**vals)
    return Efficiency(**built)


def load_hardware(name_or_path: "str | Path | Hardware") -> Hardware:
    """Load a preset by name (``"h100-sxm"``) or a user TOML path into a Hardware pytree.

    Every number is converted to SI. Raises :class:`PresetError` (a ``ValueError``) naming the
    file, the key and the value for unknown presets, malformed TOML, missing, non-numeric,
    negative or non-finite values, efficiency fractions outside (0, 1], zero tile sizes and
    unknown keys.
    """
    if isinstance(name_or_path, Hardware):
        return name_or_path
    path = _resolve(name_or_path)
    raw = _merged_raw(path)
    unknown_top = sorted(k for k in raw if k not in _TOP_KEYS and k not in {s for s, _ in _SCHEMA})
    if unknown_top:
        raise PresetError(f"{path}: unknown top-level key(s) {unknown_top}")
    for key in ("name", "kind", "efficiency_profile"):
        if not isinstance(raw.get(key), str):
            raise PresetError(f"{path}: '{key}' is missing or not a string")
    if raw["kind"] not in _KINDS:
        raise PresetError(f"{path}: kind = {raw['kind']!r} must be one of {_KINDS}")
    v: dict[tuple[str, str], float] = {}
    for (section, key), (mult, zero_ok) in _SCHEMA.items():
        table = raw.get(section)
        if not isinstance(table, dict):
            raise PresetError(f"{path}: section [{section}] is missing")
        if key not in table:
            raise PresetError(f"{path}: [{section}] is missing '{key}'")
        v[(section, key)] = _number(path, f"{section}.{key}", table[key], zero_ok) * mult
    for section in {s for s, _ in _SCHEMA}:
        extra = sorted(set(raw[section]) - {k for s, k in _SCHEMA if s == section})
        if extra:
            raise PresetError(f"{path}: [{section}] has unknown key(s) {extra}")
    if v[("memory", "usable_fraction")] > 1:
        raise PresetError(
            f"{path}: memory.usable_fraction = {v[('memory', 'usable_fraction')]} must be <= 1"
        )
    native = frozenset(
        p
        for p, key in (
            ("bf16", "bf16_tflops"),
            ("fp8", "fp8_tflops"),
            ("fp4", "fp4_tflops"),
            ("int8", "int8_tops"),
            ("fp32", "fp32_tflops"),
        )
        if v[("compute", key)] > 0
    )
    eff = _build_efficiency(path, raw["efficiency_profile"], raw.get("efficiency", {}))
    accel = Accelerator(
        name=raw["name"],
        kind=raw["kind"],
        peak_bf16_flop_per_s=v[("compute", "bf16_tflops")],
        peak_fp8_flop_per_s=v[("compute", "fp8_tflops")],
        peak_fp4_flop_per_s=v[("compute", "fp4_tflops")],
        peak_int8_flop_per_s=v[("compute", "int8_tops")],
        peak_fp32_flop_per_s=v[("compute", "fp32_tflops")],
        hbm=MemoryTier(
            "hbm",
            v[("memory", "hbm_capacity_gb")],
            v[("memory", "hbm_bandwidth_gb_per_s")],
            v[("memory", "hbm_latency_us")],
        ),
        host=MemoryTier(
            "host",
            v[("memory", "host_capacity_gb")],
            v[("memory", "host_bandwidth_gb_per_s")],
            v[("memory", "host_latency_us")],
        ),
        usable_memory_fraction=v[("memory", "usable_fraction")],
        power_w=v[("power", "tdp_w")],
        price_usd_per_hour=v[("cost", "price_usd_per_hour")],
        eff=eff,
        native=native,
    )
    fabric = Fabric(
        scaleup_domain_size=v[("scale_up", "domain_size")],
        scaleup_bw_bytes_per_s=v[("scale_up", "bandwidth_gb_per_s")],
        scaleup_latency_s=v[("scale_up", "latency_us")],
        scaleout_bw_bytes_per_s=v[("scale_out", "nic_bandwidth_gb_per_s")],
        scaleout_latency_s=v[("scale_out", "latency_us")],
        oversubscription=v[("scale_out", "oversubscription")],
    )
    return Hardware(accel=accel, fabric=fabric)
