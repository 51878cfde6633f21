"""Predict measured collective and MoE all-to-all rows (collectives.csv, moe_alltoall.csv).

Rows are grouped by their static attributes (op, implementation, dtype); each group is one
jitted, vmapped call over the numeric columns.

MoE all-to-all rows are routed as the model they were measured for: ``n_group`` and
``topk_group`` columns when the table has them, otherwise the group-limited routing of the
shipped model preset with the same (hidden, num_experts, topk) (e.g. 7168 / 256 / 8 is
DeepSeek-V3: 4 of 8 groups per token), otherwise unrestricted routing.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..hardware import Hardware
from ..model import list_models, load_model
from ..ops import _collectives as C


_COLLECTIVES = {
    "all_reduce": C.all_reduce_cost,
    "all_gather": C.all_gather_cost,
    "reduce_scatter": C.reduce_scatter_cost,
    "all_to_all": C.all_to_all_cost,
}
_MOE_OPS = ("moe_dispatch", "moe_combine", "moe_combine_low_precision", "moe_prepare")


def _row_fn(op: str, impl: str, dtype: str):
    """A function ``(hw, x) -> seconds`` of one row's numeric vector ``x`` (static attrs)."""
    if op in _COLLECTIVES:
        fn = _COLLECTIVES[op]
        if op == "all_reduce":
            kw = {"impl": "custom" if impl == "custom" else "nccl", "dtype": dtype or "bf16"}
        else:
            kw = {}
        return lambda hw, x: fn(hw, x[0], x[1], **kw).time_s
    if op == "moe_prepare":
        return lambda hw, x: C.moe_prepare_cost(hw, x[0], x[2], x[3], x[4], impl=impl).time_s
    if op == "moe_dispatch":
        return lambda hw, x: (
            C.moe_dispatch_cost(
                hw,
                *x[:5],
                dtype=dtype or "bf16",
                impl=impl,
                routing_groups=x[5],
                routing_topk_groups=x[6],
            ).time_s
        )
    low = op == "moe_combine_low_precision"
    return lambda hw, x: (
        C.moe_combine_cost(
            hw,
            *x[:5],
            dtype=dtype or "bf16",
            impl=impl,
            low_precision=low,
            routing_groups=x[5],
            routing_topk_groups=x[6],
        ).time_s
    )


@functools.cache
def _group_fn(op: str, impl: str, dtype: str):
    f = _row_fn(op, impl, dtype)
    return eqx.filter_jit(jax.vmap(f, in_axes=(None, 0)))


def _numeric(cols: dict[str, np.ndarray], name: str, n: int) -> np.ndarray:
    if name in cols:
        return np.nan_to_num(np.asarray(cols[name], dtype=float), nan=0.0)
    return np.zeros(n)


@functools.cache
def _preset_routing() -> dict[tuple[float, float, float], tuple[float, float]]:
    """(hidden, num_experts, top_k) -> (routing_groups, routing_topk_groups) of the shipped
    MoE presets; shapes shared by presets with different routing are left out."""
    seen: dict[tuple[float, float, float], set[tuple[float, float]]] = {}
    for name in list_models():
        m = load_model(name)
        if not m.has_moe:
            continue
        key = (float(m.hidden_size), float(m.num_experts), float(m.experts_per_token))
        seen.setdefault(key, set()).add((float(m.routing_groups), float(m.routing_topk_groups)))
    return {k: next(iter(v)) for k, v in seen.items() if len(v) == 1}


def _routing(cols: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    if "n_group" in cols:
        g = np.nan_to_num(np.asarray(cols["n_group"], dtype=float), nan=1.0)
        m = np.nan_to_num(np.asarray(cols.get("topk_group", cols["n_group"]), dtype=float), nan=1.0)
        return g, m
    table = _preset_routing()
    shape = np.stack([_numeric(cols, c, n) for c in ("hidden", "num_experts", "topk")], 1)
    uniq, inv = np.unique(shape, axis=0, return_inverse=True)
    gm = np.array([table.get(tuple(map(float, u)), (1.0, 1.0)) for u in uniq]).reshape(-1, 2)
    inv = inv.reshape(-1)
    return gm[inv, 0], gm[inv, 1]


def row_inputs(cols: dict[str, np.ndarray], op: str) -> np.ndarray:
    """The numeric vector per row: collectives ``[message_bytes, num_devices]``; MoE ops
    ``[tokens, hidden, topk, num_experts, ep, routing_groups, routing_topk_groups]``."""
    n = len(cols["op"])
    if op in _COLLECTIVES:
        return np.stack([_numeric(cols, "message_bytes", n), _numeric(cols, "num_devices", n)], 1)
    g, m = _routing(cols, n)
    cols5 = [_numeric(cols, k, n) for k in ("tokens", "hidden", "topk", "num_experts", "ep")]
    return np.stack(cols5 + [g, m], 1)


def _keys(cols: dict[str, np.ndarray]) -> np.ndarray:
    ops = np.asarray(cols["op"])
    n = len(ops)
    impls = np.asarray(cols.get("implementation", np.full(n, "", dtype=str)))
    dtypes = np.asarray(cols.get("dtype", np.full(n, "", dtype=str)))
    return np.char.add(
        np.char.add(np.char.add(ops.astype(str), "|"), impls.astype(str)),
        np.char.add("|", dtypes.astype(str)),
    )


def traced_groups(cols: dict[str, np.ndarray]):
    """``[(row_index, fn)]`` per (op, implementation, dtype), ``fn(hw)`` traceable (s)."""
    keys = _keys(cols)
    out = []
    for key in np.unique(keys):
        op, impl, dtype = str(key).split("|")
        if op not in _COLLECTIVES and op not in _MOE_OPS:
            raise ValueError(f"predict_rows (comm): op {op!r} is not a communication op")
        idx = np.flatnonzero(keys == key)
        x = row_inputs({k: v[idx] for k, v in cols.items()}, op)
        f = _row_fn(op, impl, dtype)

        def fn(hw, f=f, x=x):
            return jax.vmap(f, in_axes=(None, 0))(hw, jnp.asarray(x, dtype=float))

        out.append((idx, fn))
    return out


def predict_rows(hw: Hardware, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted latency (s) of each row (ops all_reduce, all_gather, reduce_scatter,
    all_to_all, moe_dispatch, moe_combine, moe_combine_low_precision, moe_prepare)."""
    ops = np.asarray(cols["op"])
    n = len(ops)
    impls = np.asarray(cols.get("implementation", np.full(n, "", dtype=str)))
    dtypes = np.asarray(cols.get("dtype", np.full(n, "", dtype=str)))
    out = np.full(n, np.nan)
    keys = np.char.add(
        np.char.add(np.char.add(ops.astype(str), "|"), impls.astype(str)),
        np.char.add("|", dtypes.astype(str)),
    )
    for key in np.unique(keys):
        op, impl, dtype = str(key).split("|")
        if op not in _COLLECTIVES and op not in _MOE_OPS:
            raise ValueError(f"predict_rows (comm): op {op!r} is not a communication op")
        mask = keys == key
        sub = {k: v[mask] for k, v in cols.items()}
        x = jnp.asarray(row_inputs(sub, op), dtype=float)
        out[mask] = np.asarray(_group_fn(op, impl, dtype)(hw, x), dtype=float)
    return out
