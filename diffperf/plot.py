"""Plots (matplotlib imported inside functions only)."""

import numpy as np


def scatter_pred_vs_meas(cols: dict, predicted: np.ndarray, path: str) -> None:
    """Log-log scatter of predicted vs measured latency, one colour per (device, op)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meas = cols["latency_s"]
    labels = np.array([f"{d} {o}" for d, o in zip(cols["device"], cols["op"])])
    fig, ax = plt.subplots(figsize=(7, 6))
    for lab in np.unique(labels):
        m = labels == lab
        ax.scatter(meas[m], predicted[m], s=4, alpha=0.5, label=lab)
    lo = float(np.nanmin([meas.min(), np.nanmin(predicted)]))
    hi = float(np.nanmax([meas.max(), np.nanmax(predicted)]))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    for f in (0.8, 1.25):
        ax.plot([lo, hi], [lo * f, hi * f], "k:", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (s)")
    ax.set_ylabel("predicted latency (s)")
    ax.set_title("diffperf kernel predictions (dotted: ±20-25%)")
    ax.legend(fontsize=6, markerscale=3, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


_SCHEME_COLOURS = {"aggregated": "tab:blue", "disaggregated": "tab:orange", "afd": "tab:green"}


def pareto_frontiers(
    series: dict,
    path: str,
    min_tok_s_per_user: float | None = None,
    title: str = "",
) -> None:
    """Tokens/s/device against tokens/s/user: every servable design (faint) and each scheme's
    Pareto frontier (line).

    ``series``: scheme -> dict of arrays ``x``/``y`` (all designs: tokens/s/user,
    tokens/s/device) and ``frontier_x``/``frontier_y`` (the frontier, any order).
    ``min_tok_s_per_user``: draws the TPOT SLO as a vertical line at ``1/TPOT_SLO``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, s in series.items():
        colour = _SCHEME_COLOURS.get(name)
        x, y = np.asarray(s["x"]), np.asarray(s["y"])
        if len(x):
            ax.scatter(x, y, s=3, alpha=0.15, color=colour)
        fx, fy = np.asarray(s["frontier_x"]), np.asarray(s["frontier_y"])
        if len(fx):
            o = np.argsort(fx)
            ax.step(fx[o], fy[o], where="pre", color=colour, lw=1.8, label=name)
            ax.plot(fx[o], fy[o], "o", color=colour, ms=3)
        else:
            ax.plot([], [], color=colour, label=f"{name} (no servable design)")
    if min_tok_s_per_user:
        ax.axvline(min_tok_s_per_user, color="k", ls=":", lw=1, label="TPOT SLO")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("output tokens/s per user")
    ax.set_ylabel("output tokens/s per device")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
