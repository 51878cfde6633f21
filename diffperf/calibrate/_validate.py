"""Error statistics of predicted vs measured kernel latencies."""

import numpy as np


def error_table(cols: dict[str, np.ndarray], predicted: np.ndarray, keys=("device", "op", "dtype")):
    """Per-group median and p90 of |pred/meas - 1|, and the bias (median of pred/meas - 1).

    Returns a list of dicts sorted by the group key.
    """
    meas = cols["latency_s"]
    rel = predicted / meas - 1.0
    labels = [tuple(str(cols[k][i]) if k in cols else "" for k in keys) for i in range(len(meas))]
    groups: dict[tuple, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    out = []
    for lab in sorted(groups):
        idx = np.array(groups[lab])
        r = rel[idx]
        r = r[np.isfinite(r)]
        a = np.abs(r)
        out.append(
            {
                **dict(zip(keys, lab)),
                "rows": int(idx.size),
                "median_abs_rel_err": float(np.median(a)) if a.size else float("nan"),
                "p90_abs_rel_err": float(np.percentile(a, 90)) if a.size else float("nan"),
                "bias": float(np.median(r)) if r.size else float("nan"),
            }
        )
    return out
