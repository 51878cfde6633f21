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
