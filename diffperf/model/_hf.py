"""Build a ModelSpec from a Hugging Face ``config.json``.

Supported ``model_type`` values and how their fields map (transformers' configuration classes
and modeling code are the reference for each rule):

- ``llama``, ``mistral``, ``qwen2``, ``qwen3``: dense GQA; every layer has a gated (SwiGLU) FFN
  of width ``intermediate_size``; ``head_dim`` defaults to ``hidden_size / num_attention_heads``.
- ``mixtral``: GQA; every layer is MoE with ``num_local_experts`` experts of width
  ``intermediate_size``, top ``num_experts_per_tok``.
- ``qwen3_moe``: GQA; layer ``i`` is MoE when it is not in ``mlp_only_layers`` and
  ``(i + 1) % decoder_sparse_step == 0`` (Qwen3MoeDecoderLayer); other layers are dense with
  width ``intermediate_size``. Experts have width ``moe_intermediate_size``.
- ``gpt_oss``: GQA with ``layer_types`` alternating sliding-window / full attention; every
  layer is MoE with ``num_local_experts`` gated experts of width ``intermediate_size`` (the
  fused gate_up projection is ``2 * intermediate_size`` wide). Attention sinks, q/k/v/o biases
  and expert biases are not counted (< 0.01 % of the parameters).
- ``deepseek_v3`` (DeepSeek-V3/R1), ``kimi_k2`` (same architecture): MLA; layer ``i`` is MoE
  when ``i >= first_k_dense_replace`` and ``i % moe_layer_freq == 0`` (DeepseekV3DecoderLayer);
  ``n_shared_experts`` shared experts of width ``moe_intermediate_size``; the MTP module
  (``num_nextn_predict_layers``) is not part of the served model and is not counted.
- ``step3_text`` (StepFun Step-3's language model): MFA attention mapped to the GQA path with
  ``num_attention_groups`` (1) KV heads of ``head_dim`` (256); the low-rank query
  (``share_q_dim`` 2048) is not represented, so the Q projection is counted as a full
  ``hidden x heads·head_dim`` GEMM (+69M parameters per layer, ~+4B total, ~+11% active).
  Layer ``i`` is MoE when it is in ``moe_layers_enum`` (``moe_num_experts`` experts of width
  ``moe_intermediate_size``, top ``moe_top_k``, ``share_expert_dim / moe_intermediate_size``
  shared experts); other layers are dense with width ``intermediate_size``.
- ``deepseek_v32``: as ``deepseek_v3`` with DSA (``index_topk``, ``index_n_heads``,
  ``index_head_dim``); a ``deepseek_v3`` config that carries ``index_topk`` is treated the same.

``default_dtype`` comes from ``quantization_config``: ``fp8`` with ``weight_block_size`` ->
``"fp8_block"``, ``fp8`` without -> ``"fp8"``, ``mxfp4`` -> ``"mxfp4"``; otherwise from
``torch_dtype`` (or ``dtype``): bfloat16 -> ``"bf16"``, float16 -> ``"fp16"``, float32 ->
``"fp32"``.
"""

import json
import os
from pathlib import Path
from typing import Any

from ._spec import ModelSpec


_DENSE = ("llama", "mistral", "qwen2", "qwen3")
_DEEPSEEK = ("deepseek_v3", "deepseek_v32", "kimi_k2")
SUPPORTED_MODEL_TYPES = (*_DENSE, "mixtral", "qwen3_moe", "gpt_oss", "step3_text", *_DEEPSEEK)

_TORCH_DTYPES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "float": "fp32",
}


def _read_config(cfg: dict | str | os.PathLike) -> tuple[dict[str, Any], str]:
    """Return (config dict, a label for error messages)."""
    if isinstance(cfg, dict):
        return cfg, "config.json"
    path = Path(cfg)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"{path}: no such config.json file")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: malformed JSON at line {e.lineno}, column {e.colno} (char {e.pos}): {e.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data, str(path)


class _Reader:
    """Typed access to config fields with errors that name the file, field and value."""

    def __init__(self, cfg: dict[str, Any], label: str):
        self.cfg = cfg
        self.label = label

    def _num(self, key: str, value: Any, *, positive: bool, allow_zero: bool) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.label}: {key}={value!r} must be a number")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{self.label}: {key}={value!r} must be a whole number")
        v = int(value)
        if positive and (v < 0 or (v == 0 and not allow_zero)):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{self.label}: {key}={value!r} must be {bound}")
        return v

    def req(self, key: str) -> int:
        """A required positive integer field."""
        if key not in self.cfg or self.cfg[key] is None:
            raise ValueError(f"{self.label}: required field {key!r} is missing")
        return self._num(key, self.cfg[key], positive=True, allow_zero=False)

    def opt(self, key: str, default: int, *, allow_zero: bool = True) -> int:
        """An optional non-negative integer field (``None`` means the default)."""
        value = self.cfg.get(key)
        if value is None:
            return default
        return self._num(key, value, positive=True, allow_zero=allow_zero)


def _default_dtype(cfg: dict[str, Any]) -> str:
    q = cfg.get("quantization_config")
    if isinstance(q, dict):
        method = str(q.get("quant_method", "")).lower()
        if method == "fp8":
            return "fp8_block" if q.get("weight_block_size") else "fp8"
        if method == "mxfp4":
            return "mxfp4"
    td = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    return _TORCH_DTYPES.get(str(td).removeprefix("torch."), "bf16")


def from_hf_config(cfg: dict | str | os.PathLike, name: str | None = None) -> ModelSpec:
    """Build a `ModelSpec` from a Hugging Face ``config.json`` (dict, file or folder path).

    See the module docstring for the field mapping of each supported ``model_type``.

    **Arguments:**
    - ``cfg``: the parsed config dict, a path to ``config.json``, or a folder containing one.
    - ``name``: ``ModelSpec.name``; defaults to ``_name_or_path``, the file's folder or stem,
      or the model_type.

    **Returns:** a `ModelSpec`.

    **Raises:** ``ValueError`` for malformed JSON (file and position), an unsupported
    ``model_type``, a missing required field, or a non-positive dimension.
    """
    data, label = _read_config(cfg)
    # Multimodal wrappers (e.g. Kimi-K2.5) keep the language model under text_config.
    if data.get("model_type") not in SUPPORTED_MODEL_TYPES and isinstance(
        data.get("text_config"), dict
    ):
        data = {**data["text_config"], "quantization_config": data.get("quantization_config")}
        if data["quantization_config"] is None:
            del data["quantization_config"]
    model_type = data.get("model_type")
    if model_type is None:
        raise ValueError(f"{label}: required field 'model_type' is missing")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{label}: model_type={model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    r = _Reader(data, label)

    if name is None:
        name = data.get("_name_or_path") or None
        if not name and not isinstance(cfg, dict):
            p = Path(cfg)
            name = p.name if p.is_dir() else (p.parent.name if p.stem == "config" else p.stem)
        name = name or str(model_type)

    hidden = r.req("hidden_size")
    layers = r.req("num_hidden_layers")
    heads = r.req("num_attention_heads")
    vocab = r.req("vocab_size")
    kv_heads = r.opt("num_key_value_heads", heads, allow_zero=False)
    if model_type == "step3_text":  # MFA: one shared KV head per attention group
        kv_heads = r.opt("num_attention_groups", 1, allow_zero=False)
    if heads % kv_heads:
        raise ValueError(
            f"{label}: num_attention_heads={heads} is not a multiple of "
            f"num_key_value_heads={kv_heads}"
        )
    if "head_dim" in data and data["head_dim"] is not None:
        head_dim = r.req("head_dim")
    else:
        if hidden % heads:
            raise ValueError(
                f"{label}: head_dim is missing and hidden_size={hidden} is not a multiple of "
                f"num_attention_heads={heads}"
            )
        head_dim = hidden // heads
    tie = bool(data.get("tie_word_embeddings", False))
    common: dict[str, Any] = dict(
        name=str(name),
        gated_mlp=True,
        tie_word_embeddings=tie,
        default_dtype=_default_dtype(data),
        num_layers=layers,
        hidden_size=hidden,
        vocab_size=vocab,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
    )

    if model_type in _DENSE:
        return ModelSpec(
            attention="gqa",
            has_moe=False,
            num_dense_layers=layers,
            ffn_intermediate=r.req("intermediate_size"),
            **common,
        )

    if model_type == "mixtral":
        width = r.req("intermediate_size")
        return ModelSpec(
            attention="gqa",
            has_moe=True,
            num_dense_layers=0,
            ffn_intermediate=width,
            num_experts=r.req("num_local_experts"),
            experts_per_token=r.req("num_experts_per_tok"),
            moe_intermediate=width,
            **common,
        )

    if model_type == "qwen3_moe":
        n_exp = r.opt("num_experts", 0)
        step = r.opt("decoder_sparse_step", 1, allow_zero=False)
        mlp_only = data.get("mlp_only_layers") or []
        if not isinstance(mlp_only, list):
            raise ValueError(f"{label}: mlp_only_layers={mlp_only!r} must be a list")
        n_moe = sum(
            1 for i in range(layers) if i not in mlp_only and n_exp > 0 and (i + 1) % step == 0
        )
        return ModelSpec(
            attention="gqa",
            has_moe=n_moe > 0,
            num_dense_layers=layers - n_moe,
            ffn_intermediate=r.opt("intermediate_size", 0),
            num_experts=n_exp,
            experts_per_token=r.req("num_experts_per_tok") if n_moe else 0,
            moe_intermediate=r.req("moe_intermediate_size") if n_moe else 0,
            **common,
        )

    if model_type == "step3_text":
        enum = data.get("moe_layers_enum")
        if isinstance(enum, str):
            enum = [int(x) for x in enum.split(",") if x.strip()]
        if not isinstance(enum, list):
            raise ValueError(f"{label}: moe_layers_enum={enum!r} must be a list of layer ids")
        n_moe = sum(1 for i in range(layers) if i in set(enum))
        width = r.req("moe_intermediate_size")
        shared = r.opt("share_expert_dim", 0)
        if shared % width:
            raise ValueError(
                f"{label}: share_expert_dim={shared} is not a multiple of "
                f"moe_intermediate_size={width}"
            )
        return ModelSpec(
            attention="gqa",
            has_moe=n_moe > 0,
            num_dense_layers=layers - n_moe,
            ffn_intermediate=r.req("intermediate_size"),
            num_experts=r.req("moe_num_experts"),
            experts_per_token=r.req("moe_top_k"),
            moe_intermediate=width,
            num_shared_experts=shared // width,
            **common,
        )

    if model_type == "gpt_oss":
        width = r.req("intermediate_size")
        layer_types = data.get("layer_types")
        if layer_types is None:  # the original release alternates, sliding first
            layer_types = ["sliding_attention", "full_attention"] * (layers // 2)
            layer_types += ["sliding_attention"] * (layers % 2)
        if not isinstance(layer_types, list) or len(layer_types) != layers:
            raise ValueError(
                f"{label}: layer_types must be a list of num_hidden_layers={layers} entries"
            )
        n_sliding = sum(1 for t in layer_types if t == "sliding_attention")
        window = r.opt("sliding_window", 0) if n_sliding else 0
        if n_sliding and window == 0:
            raise ValueError(
                f"{label}: sliding_window must be > 0 when layer_types has sliding layers"
            )
        n_exp = data.get("num_local_experts", data.get("num_experts"))
        if n_exp is None:
            raise ValueError(f"{label}: required field 'num_local_experts' is missing")
        return ModelSpec(
            attention="gqa",
            has_moe=True,
            num_dense_layers=0,
            ffn_intermediate=width,
            num_experts=r._num("num_local_experts", n_exp, positive=True, allow_zero=False),
            experts_per_token=r.opt(
                "num_experts_per_tok", r.opt("experts_per_token", 0), allow_zero=False
            ),
            moe_intermediate=width,
            sliding_window_tokens=window,
            num_sliding_layers=n_sliding,
            **common,
        )

    # DeepSeek-V3 family (deepseek_v3, kimi_k2, deepseek_v32): MLA, optionally DSA.
    n_exp = r.opt("n_routed_experts", 0)
    first_dense = r.opt("first_k_dense_replace", 0)
    freq = r.opt("moe_layer_freq", 1, allow_zero=False)
    n_moe = sum(1 for i in range(layers) if n_exp > 0 and i >= first_dense and i % freq == 0)
    is_dsa = model_type == "deepseek_v32" or data.get("index_topk") is not None
    dsa: dict[str, Any] = {}
    if is_dsa:
        dsa = dict(
            index_topk=r.req("index_topk"),
            index_num_heads=r.req("index_n_heads"),
            index_head_dim=r.req("index_head_dim"),
        )
    q_lora = r.opt("q_lora_rank", 0)
    groups = r.opt("n_group", 1, allow_zero=False)
    topk_groups = r.opt("topk_group", groups, allow_zero=False)
    if topk_groups > groups:
        raise ValueError(f"{label}: topk_group={topk_groups} must be <= n_group={groups}")
    if topk_groups == groups:  # every group may be picked: unrestricted routing
        groups = topk_groups = 1
    common["head_dim"] = r.req("qk_nope_head_dim") + r.req("qk_rope_head_dim")
    return ModelSpec(
        attention="dsa" if is_dsa else "mla",
        has_moe=n_moe > 0,
        num_dense_layers=layers - n_moe,
        ffn_intermediate=r.req("intermediate_size"),
        num_experts=n_exp,
        experts_per_token=r.req("num_experts_per_tok") if n_moe else 0,
        moe_intermediate=r.req("moe_intermediate_size") if n_moe else 0,
        num_shared_experts=r.opt("n_shared_experts", 0),
        q_lora_rank=q_lora,
        kv_lora_rank=r.req("kv_lora_rank"),
        qk_nope_head_dim=r.req("qk_nope_head_dim"),
        qk_rope_head_dim=r.req("qk_rope_head_dim"),
        v_head_dim=r.req("v_head_dim"),
        routing_groups=groups,
        routing_topk_groups=topk_groups,
        **dsa,
        **common,
    )
