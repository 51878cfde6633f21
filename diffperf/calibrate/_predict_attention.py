"""Predict measured attention rows: attention_prefill, attention_decode, mla_prefill, mla_decode.

Rows are grouped by their static attributes (op, scope, dtype, kv_dtype, gemm_dtype, model);
each group is one jitted, vmapped call of the kernel model in :mod:`diffperf.ops._attention`.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..hardware import Hardware
from ..model._spec import ModelSpec
from ..ops._attention import (
    attention_decode_cost,
    attention_prefill_cost,
    mla_decode_cost,
    mla_module_cost,
    mla_prefill_cost,
)


OPS = ("attention_prefill", "attention_decode", "mla_prefill", "mla_decode")


def deepseek_v3_spec() -> ModelSpec:
    """DeepSeek-V3 as a ModelSpec (from diffperf.model if available, else its config dims).

    Dims from deepseek-ai/DeepSeek-V3 config.json: hidden 7168, 128 heads, q_lora_rank 1536,
    kv_lora_rank 512, qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128.
    """
    try:
        from ..model import load_model  # type: ignore[attr-defined]

        return load_model("deepseek-v3")
    except Exception:  # noqa: BLE001 - the model layer may not exist yet
        return ModelSpec(
            name="deepseek-v3",
            attention="mla",
            gated_mlp=True,
            has_moe=True,
            tie_word_embeddings=False,
            default_dtype="fp8_block",
            num_layers=61.0,
            num_dense_layers=3.0,
            hidden_size=7168.0,
            vocab_size=129280.0,
            num_heads=128.0,
            num_kv_heads=128.0,
            head_dim=192.0,
            ffn_intermediate=18432.0,
            num_experts=256.0,
            experts_per_token=8.0,
            moe_intermediate=2048.0,
            num_shared_experts=1.0,
            q_lora_rank=1536.0,
            kv_lora_rank=512.0,
            qk_nope_head_dim=128.0,
            qk_rope_head_dim=64.0,
            v_head_dim=128.0,
        )


_MODELS = {"deepseek-v3": deepseek_v3_spec, "deepseek-r1": deepseek_v3_spec}


def _col(cols, name, n):
    if name in cols:
        return np.asarray(cols[name], dtype=np.float64)
    return np.full(n, np.nan)


def group_latency_fn(op: str, scope: str, dtype: str, kv_dtype: str, gemm_dtype: str):
    """Vmapped ``f(hw, model, batch, seq_len, kv_len, heads, kv_heads, head_dim) -> s``."""

    def one(hw, model, b, s, kv, h, hkv, d):
        if op == "attention_prefill":
            return attention_prefill_cost(hw, b, s, h, hkv, d, dtype, kv_dtype).time_s
        if op == "attention_decode":
            return attention_decode_cost(hw, b, kv, h, hkv, d, dtype, kv_dtype).time_s
        if scope == "module":
            phase = "prefill" if op == "mla_prefill" else "decode"
            kvl = s if op == "mla_prefill" else kv
            return mla_module_cost(
                hw, model, b, s, kvl, h, phase, gemm_dtype or "fp8_block", kv_dtype, dtype
            ).time_s
        if op == "mla_prefill":
            return mla_prefill_cost(
                hw,
                b,
                s,
                h,
                model.kv_lora_rank,
                model.qk_nope_head_dim,
                model.qk_rope_head_dim,
                model.v_head_dim,
                dtype,
                kv_dtype,
            ).time_s
        return mla_decode_cost(
            hw, b, kv, h, model.kv_lora_rank, model.qk_rope_head_dim, dtype, kv_dtype
        ).time_s

    return jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0, 0, 0))


@functools.cache
def _jitted(op, scope, dtype, kv_dtype, gemm_dtype):
    return eqx.filter_jit(group_latency_fn(op, scope, dtype, kv_dtype, gemm_dtype))


def group_rows(cols: dict[str, np.ndarray]):
    """Yield ``(key, index_array, arrays)`` per static group of attention rows."""
    n = len(cols["op"])
    text = lambda c: cols[c] if c in cols else np.full(n, "", dtype=str)
    keys = list(
        zip(
            text("op"),
            text("scope"),
            text("dtype"),
            text("kv_dtype"),
            text("gemm_dtype"),
            text("model"),
        )
    )
    b = _col(cols, "batch", n)
    s = _col(cols, "seq_len", n)
    kv = _col(cols, "kv_len", n)
    h = _col(cols, "num_heads", n)
    hkv = _col(cols, "num_kv_heads", n)
    d = _col(cols, "head_dim", n)
    for key in sorted(set(keys)):
        idx = np.array([i for i, k in enumerate(keys) if k == key])
        op = key[0]
        if op not in OPS:
            raise ValueError(f"op={op!r} is not an attention op ({', '.join(OPS)})")
        arrs = [b[idx], s[idx], kv[idx], h[idx], hkv[idx], d[idx]]
        arrs = [np.where(np.isnan(a), 1.0, a) for a in arrs]
        if op == "mla_prefill" and np.isnan(_col(cols, "seq_len", n)[idx]).any():
            raise ValueError("mla_prefill rows need seq_len")
        yield key, idx, [jnp.asarray(a, dtype=float) for a in arrs]


def model_for(name: str) -> ModelSpec:
    name = name or "deepseek-v3"
    if name not in _MODELS:
        raise ValueError(f"model={name!r} is not known to the MLA predictor ({', '.join(_MODELS)})")
    return _MODELS[name]()


def traced_groups(cols: dict[str, np.ndarray]):
    """``[(row_index, fn)]`` per static group, ``fn(hw)`` the traceable latencies (s)."""
    out = []
    for (op, scope, dtype, kv_dtype, gemm_dtype, model), idx, arrs in group_rows(cols):
        spec = model_for(model) if op.startswith("mla") else deepseek_v3_spec()
        f = group_latency_fn(op, scope or "kernel", dtype, kv_dtype or dtype, gemm_dtype)
        np_arrs = [np.asarray(a) for a in arrs]

        def fn(hw, f=f, spec=spec, np_arrs=np_arrs):
            return f(hw, spec, *(jnp.asarray(a, dtype=float) for a in np_arrs))

        out.append((idx, fn))
    return out


def predict_rows(hw: Hardware, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted latency (s) of every attention/MLA row of a measured table (one device).

    ``scope`` ``kernel`` (or blank) is the attention kernel alone; ``module`` is the whole
    DeepSeek-V3 attention block (:func:`diffperf.ops._attention.mla_module_cost`) with
    ``num_heads`` heads per device.
    """
    n = len(cols["op"])
    out = np.full(n, np.nan)
    for (op, scope, dtype, kv_dtype, gemm_dtype, model), idx, arrs in group_rows(cols):
        spec = model_for(model) if op.startswith("mla") else deepseek_v3_spec()
        f = _jitted(op, scope or "kernel", dtype, kv_dtype or dtype, gemm_dtype)
        out[idx] = np.asarray(f(hw, spec, *arrs))
    return out
