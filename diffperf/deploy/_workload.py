"""Workloads and SLOs: what requests look like and how fast they must be served.

A workload is a pytree: every number (mean ISL/OSL and their spread, prefix-hit rate, load,
SLO targets) is a float leaf, so serving metrics can be differentiated and swept over it.
Which load model applies (closed loop vs open loop) and which statistic the SLOs bind
(mean, p50, p90, p99) are static.
"""

import math
import tomllib
from pathlib import Path

import equinox as eqx

from .._numerics import as_float_array
from .._types import FloatScalarLike


PERCENTILES = {"mean": None, "p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
LOAD_MODES = ("closed", "open")
NO_SLO_S = 1e9  # "no SLO": a bound no design reaches, kept finite so penalties stay finite


class WorkloadError(ValueError):
    """A workload or SLO that is unknown, malformed or out of range (names field and value)."""


class SLO(eqx.Module):
    """Latency targets. ``percentile`` (static) says which statistic must meet them."""

    ttft_s: FloatScalarLike = eqx.field(converter=as_float_array, default=NO_SLO_S)
    tpot_s: FloatScalarLike = eqx.field(converter=as_float_array, default=NO_SLO_S)
    percentile: str = eqx.field(static=True, default="mean")

    def __check_init__(self):
        if self.percentile not in PERCENTILES:
            raise WorkloadError(
                f"slo.percentile = {self.percentile!r} must be one of {list(PERCENTILES)}"
            )

    @property
    def quantile(self) -> float | None:
        """The quantile in (0, 1), or None for the mean."""
        return PERCENTILES[self.percentile]


class Workload(eqx.Module):
    """Request mix, prefix reuse, load and SLOs.

    - ``isl_tokens``/``osl_tokens``: mean prompt and output lengths; ``isl_cv``/``osl_cv``
      their coefficients of variation (0 = fixed lengths).
    - ``prefix_hit_rate``: fraction of prompt tokens found in the prefix (KV) cache: they skip
      prefill compute but are still attended to and still occupy KV memory.
    - ``load_mode`` (static): ``"closed"`` — ``concurrency`` clients each send the next request
      as soon as the last one finishes (benchmark harnesses); ``"open"`` — Poisson arrivals at
      ``arrival_rate_per_s``.
    - ``slo``: TTFT/TPOT targets at a statistic.
    """

    isl_tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    osl_tokens: FloatScalarLike = eqx.field(converter=as_float_array)
    isl_cv: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    osl_cv: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    prefix_hit_rate: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    concurrency: FloatScalarLike = eqx.field(converter=as_float_array, default=1.0)
    arrival_rate_per_s: FloatScalarLike = eqx.field(converter=as_float_array, default=0.0)
    load_mode: str = eqx.field(static=True, default="closed")
    slo: SLO = SLO()
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        if self.load_mode not in LOAD_MODES:
            raise WorkloadError(
                f"workload.load_mode = {self.load_mode!r} must be one of {LOAD_MODES}"
            )

    @property
    def uncached_isl_tokens(self):
        """Prompt tokens that must be prefilled (the rest hit the prefix cache)."""
        return self.isl_tokens * (1.0 - self.prefix_hit_rate)


def check_workload(w: Workload) -> None:
    """Validate a concrete workload; raises :class:`WorkloadError` naming field and value."""
    checks = [
        ("isl_tokens", w.isl_tokens, 1.0, math.inf),
        ("osl_tokens", w.osl_tokens, 1.0, math.inf),
        ("isl_cv", w.isl_cv, 0.0, 10.0),
        ("osl_cv", w.osl_cv, 0.0, 10.0),
        ("prefix_hit_rate", w.prefix_hit_rate, 0.0, 0.999),
        ("slo.ttft_s", w.slo.ttft_s, 1e-6, math.inf),
        ("slo.tpot_s", w.slo.tpot_s, 1e-6, math.inf),
    ]
    if w.load_mode == "closed":
        checks.append(("concurrency", w.concurrency, 1.0, math.inf))
    else:
        checks.append(("arrival_rate_per_s", w.arrival_rate_per_s, 1e-9, math.inf))
    for name, v, lo, hi in checks:
        x = float(v)
        if not math.isfinite(x) or x < lo or x > hi:
            raise WorkloadError(f"workload.{name} = {x:g} must be in [{lo:g}, {hi:g}]")


# Presets: figures and sources in workloads/*.toml beside this file.
_PRESET_DIR = Path(__file__).resolve().parent / "workloads"


def list_workloads() -> list[str]:
    return sorted(p.stem for p in _PRESET_DIR.glob("*.toml"))


_KEYS = {
    "isl_tokens",
    "osl_tokens",
    "isl_cv",
    "osl_cv",
    "prefix_hit_rate",
    "concurrency",
    "arrival_rate_per_s",
    "load_mode",
    "ttft_slo_s",
    "tpot_slo_s",
    "slo_percentile",
    "name",
    "description",
}


def load_workload(name_or_path: "str | Path | Workload", **overrides) -> Workload:
    """A workload preset (``chat``, ``coding``, ``agentic-coding``, ...) or a TOML file.

    TOML keys: ``isl_tokens``, ``osl_tokens``, ``isl_cv``, ``osl_cv``, ``prefix_hit_rate``,
    ``load_mode`` (closed|open), ``concurrency``, ``arrival_rate_per_s``, ``ttft_slo_s``,
    ``tpot_slo_s``, ``slo_percentile`` (mean|p50|p90|p95|p99). ``overrides`` (same keys)
    replace file values, e.g. from CLI flags.
    """
    if isinstance(name_or_path, Workload):
        raw: dict = {}
        base = name_or_path
    else:
        p = Path(name_or_path)
        if p.suffix != ".toml" and not p.exists():
            cand = _PRESET_DIR / f"{name_or_path}.toml"
            if not cand.exists():
                raise WorkloadError(
                    f"workload={str(name_or_path)!r} is neither a preset nor a TOML file; "
                    f"presets: {', '.join(list_workloads())}"
                )
            p = cand
        try:
            with open(p, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise WorkloadError(f"{p}: cannot read workload file: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise WorkloadError(f"{p}: malformed TOML: {e}") from None
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise WorkloadError(f"{p}: unknown key(s) {unknown}; keys: {sorted(_KEYS)}")
        for k in ("isl_tokens", "osl_tokens"):
            if k not in raw:
                raise WorkloadError(f"{p}: '{k}' is missing")
        raw.setdefault("name", p.stem)
        base = None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for k, v in raw.items():
        if k in ("load_mode", "slo_percentile", "name", "description"):
            if not isinstance(v, str):
                raise WorkloadError(f"workload.{k} = {v!r} must be a string")
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise WorkloadError(f"workload.{k} = {v!r} must be a number")

    def get(key, default):
        return raw[key] if key in raw else default

    if base is not None:
        d = {
            "isl_tokens": base.isl_tokens,
            "osl_tokens": base.osl_tokens,
            "isl_cv": base.isl_cv,
            "osl_cv": base.osl_cv,
            "prefix_hit_rate": base.prefix_hit_rate,
            "concurrency": base.concurrency,
            "arrival_rate_per_s": base.arrival_rate_per_s,
            "load_mode": base.load_mode,
            "ttft_slo_s": base.slo.ttft_s,
            "tpot_slo_s": base.slo.tpot_s,
            "slo_percentile": base.slo.percentile,
            "name": base.name,
        }
    else:
        d = {}
    mode = get("load_mode", d.get("load_mode", "closed"))
    if "arrival_rate_per_s" in overrides and overrides["arrival_rate_per_s"] is not None:
        mode = "open"
    if "concurrency" in overrides and overrides["concurrency"] is not None:
        mode = "closed"
    try:
        w = Workload(
            isl_tokens=get("isl_tokens", d.get("isl_tokens")),
            osl_tokens=get("osl_tokens", d.get("osl_tokens")),
            isl_cv=get("isl_cv", d.get("isl_cv", 0.0)),
            osl_cv=get("osl_cv", d.get("osl_cv", 0.0)),
            prefix_hit_rate=get("prefix_hit_rate", d.get("prefix_hit_rate", 0.0)),
            concurrency=get("concurrency", d.get("concurrency", 1.0)),
            arrival_rate_per_s=get("arrival_rate_per_s", d.get("arrival_rate_per_s", 0.0)),
            load_mode=mode,
            slo=SLO(
                ttft_s=get("ttft_slo_s", d.get("ttft_slo_s", NO_SLO_S)),
                tpot_s=get("tpot_slo_s", d.get("tpot_slo_s", NO_SLO_S)),
                percentile=get("slo_percentile", d.get("slo_percentile", "mean")),
            ),
            name=get("name", d.get("name", "custom")),
        )
    except WorkloadError:
        raise
    check_workload(w)
    return w
