"""Plots of the search area: tornado of elasticities, heatmaps, sweep lines, requirements.

Edge module: matplotlib is imported inside each function (Agg backend), never at import time.
"""

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(name: str) -> str:
    for pre in ("hardware.accel.eff.", "hardware.accel.", "hardware.", "deployment."):
        if name.startswith(pre):
            return name[len(pre) :]
    return name


def tornado(rows, path: str, metric: str, title: str = "", swing_pct: float | None = None):
    """Horizontal bars of elasticities ``(name, value, elasticity)``, largest on top.

    With ``swing_pct`` the bars show the metric's change in % for a ±``swing_pct`` % change of
    each parameter, to first order (``elasticity × swing``), low side and high side.
    """
    plt = _plt()
    rows = list(rows)[::-1]
    names = [_short(r[0]) for r in rows]
    el = np.asarray([r[2] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.4))
    y = np.arange(len(rows))
    if swing_pct is None:
        ax.barh(y, el, color=np.where(el < 0, "tab:blue", "tab:red"))
        ax.set_xlabel(f"elasticity  d log({metric}) / d log(parameter)")
    else:
        hi = el * swing_pct
        ax.barh(y, hi, color="tab:red", label=f"parameter +{swing_pct:g}%")
        ax.barh(y, -hi, color="tab:blue", label=f"parameter -{swing_pct:g}%")
        ax.set_xlabel(f"change of {metric} (%), first order")
        ax.legend(fontsize=8, loc="lower right")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_title(title or f"sensitivity of {metric}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def heatmap(
    xs,
    ys,
    z,
    path: str,
    xlabel: str,
    ylabel: str,
    zlabel: str,
    title: str = "",
    contour: float | None = None,
    log_xy: bool = True,
):
    """``z[i, j]`` at ``(xs[j], ys[i])`` as a colour map, with an optional contour (e.g. an SLO)."""
    plt = _plt()
    from matplotlib.colors import LogNorm

    z = np.asarray(z, dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 5))
    pos = z[np.isfinite(z) & (z > 0)]
    norm = LogNorm(vmin=pos.min(), vmax=pos.max()) if len(pos) and pos.max() > pos.min() else None
    pc = ax.pcolormesh(xs, ys, z, shading="nearest", norm=norm, cmap="viridis")
    fig.colorbar(pc, ax=ax, label=zlabel)
    if contour is not None and np.nanmin(z) < contour < np.nanmax(z):
        cs = ax.contour(xs, ys, z, levels=[contour], colors="w", linewidths=1.5)
        ax.clabel(cs, fmt={contour: f"{contour:g}"}, fontsize=8)
    if log_xy:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def sweep_lines(x, series: dict, path: str, xlabel: str, ylabel: str, title: str = ""):
    """One line per entry of ``series`` (label -> y) against ``x`` (log-log)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, y in series.items():
        ax.plot(x, y, marker="o", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", lw=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def sweep_plot(columns: dict, axes: list, metric: str, path: str, title: str = ""):
    """Plot of a sweep's result: a line for one axis, a heatmap for two (others at their first
    value), a scatter against the first axis for more."""
    x = np.asarray(columns[axes[0]])
    z = np.asarray(columns[metric])
    if len(axes) == 1:
        sweep_lines(x, {metric: z}, path, axes[0], metric, title)
        return
    keep = np.ones(len(x), dtype=bool)
    for a in axes[2:]:
        keep &= np.asarray(columns[a]) == np.asarray(columns[a])[0]
    xs = np.unique(x[keep])
    y = np.asarray(columns[axes[1]])
    ys = np.unique(y[keep])
    if len(axes) == 2 or len(xs) * len(ys) == int(keep.sum()):
        grid = np.full((len(ys), len(xs)), np.nan)
        grid[np.searchsorted(ys, y[keep]), np.searchsorted(xs, x[keep])] = z[keep]
        log = bool(np.all(xs > 0) and np.all(ys > 0))
        heatmap(xs, ys, grid, path, axes[0], axes[1], metric, title, log_xy=log)
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter(x, z, s=3, alpha=0.4)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def requirements_bars(table: dict, path: str, unit: str, title: str = ""):
    """Grouped bars: ``table[group][label] = required value`` (log scale, NaN/inf skipped)."""
    plt = _plt()
    groups = list(table)
    labels = list(dict.fromkeys(k for g in groups for k in table[g]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2), 4.4))
    width = 0.8 / max(len(labels), 1)
    for i, lab in enumerate(labels):
        vals = np.asarray([table[g].get(lab, np.nan) for g in groups], dtype=float)
        vals = np.where(np.isfinite(vals), vals, np.nan)
        ax.bar(np.arange(len(groups)) + (i - (len(labels) - 1) / 2) * width, vals, width, label=lab)
    ax.set_xticks(np.arange(len(groups)), groups, fontsize=8, rotation=15, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel(unit)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", which="both", lw=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
