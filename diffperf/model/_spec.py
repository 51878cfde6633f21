"""ModelSpec: the architecture of a decoder-only transformer, as a pytree.

Structure that selects code paths (attention variant, gated MLP, whether MoE layers exist) is
static; every dimension and count is a float leaf, so it can be swept ("what if the model had
2x the experts?") and differentiated. Layer kinds enter as counts, not as a loop over layers:
a model has ``num_dense_layers`` layers with a dense FFN, ``num_layers - num_dense_layers``
MoE layers, and ``num_sliding_layers`` of its layers use sliding-window attention.
"""

import equinox as eqx
import jax.numpy as jnp

from .._numerics import as_float_array
from .._types import FloatScalar, FloatScalarLike


ATTENTION_KINDS = ("gqa", "mla", "dsa")  # gqa covers MHA (kv_heads == heads) and MQA


def _f(default=None):
    if default is None:
        return eqx.field(converter=as_float_array)
    return eqx.field(converter=as_float_array, default=default)


class ModelSpec(eqx.Module):
    """Architecture of a decoder-only LLM.

    **Static:** ``name``, ``attention`` (``"gqa"`` | ``"mla"`` | ``"dsa"``), ``gated_mlp``
    (SwiGLU-style 3-matrix FFN), ``has_moe``, ``tie_word_embeddings``, ``default_dtype``
    (format of the released weights, e.g. ``"fp8_block"`` for DeepSeek-V3).

    **Leaves:** ``num_layers``, ``num_dense_layers``, ``hidden_size``, ``vocab_size``,
    ``num_heads``, ``num_kv_heads``, ``head_dim``, ``ffn_intermediate`` (dense FFN width),
    ``num_experts``, ``experts_per_token``, ``moe_intermediate``, ``num_shared_experts``
    (each of width ``moe_intermediate``), ``sliding_window_tokens``, ``num_sliding_layers``,
    MLA: ``q_lora_rank`` (0 = no query compression), ``kv_lora_rank``,
    ``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``; DSA: ``index_topk``,
    ``index_num_heads``, ``index_head_dim``; group-limited routing: ``routing_groups``
    (``n_group``) and ``routing_topk_groups`` (``topk_group``, the groups a token's experts
    come from; 1 and 1 = unrestricted).
    """

    name: str = eqx.field(static=True)
    attention: str = eqx.field(static=True)
    gated_mlp: bool = eqx.field(static=True)
    has_moe: bool = eqx.field(static=True)
    tie_word_embeddings: bool = eqx.field(static=True)
    default_dtype: str = eqx.field(static=True)
    num_layers: FloatScalarLike = _f()
    num_dense_layers: FloatScalarLike = _f()
    hidden_size: FloatScalarLike = _f()
    vocab_size: FloatScalarLike = _f()
    num_heads: FloatScalarLike = _f()
    num_kv_heads: FloatScalarLike = _f()
    head_dim: FloatScalarLike = _f()
    ffn_intermediate: FloatScalarLike = _f()
    num_experts: FloatScalarLike = _f(0.0)
    experts_per_token: FloatScalarLike = _f(0.0)
    moe_intermediate: FloatScalarLike = _f(0.0)
    num_shared_experts: FloatScalarLike = _f(0.0)
    sliding_window_tokens: FloatScalarLike = _f(0.0)
    num_sliding_layers: FloatScalarLike = _f(0.0)
    q_lora_rank: FloatScalarLike = _f(0.0)
    kv_lora_rank: FloatScalarLike = _f(0.0)
    qk_nope_head_dim: FloatScalarLike = _f(0.0)
    qk_rope_head_dim: FloatScalarLike = _f(0.0)
    v_head_dim: FloatScalarLike = _f(0.0)
    index_topk: FloatScalarLike = _f(0.0)
    index_num_heads: FloatScalarLike = _f(0.0)
    index_head_dim: FloatScalarLike = _f(0.0)
    routing_groups: FloatScalarLike = _f(1.0)
    routing_topk_groups: FloatScalarLike = _f(1.0)

    def __check_init__(self):
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(
                f"ModelSpec.attention={self.attention!r} must be one of {ATTENTION_KINDS}"
            )

    # -- derived sizes (pure functions of leaves) ---------------------------------------------
    @property
    def num_moe_layers(self) -> FloatScalar:
        return jnp.asarray(self.num_layers - self.num_dense_layers, dtype=float)

    def kv_elems_per_token_per_layer(self) -> FloatScalar:
        """Cached elements per token per layer (before the KV dtype's byte size).

        GQA: ``2 * kv_heads * head_dim`` (K and V). MLA/DSA: the compressed latent plus the
        shared RoPE key, ``kv_lora_rank + qk_rope_head_dim`` (DeepSeek-V2 paper, sec. 2.1);
        DSA additionally caches the indexer key, ``index_head_dim`` per token (DeepSeek-V3.2
        report: the lightning indexer keeps its own small key cache).
        """
        if self.attention == "gqa":
            return 2.0 * self.num_kv_heads * self.head_dim
        latent = self.kv_lora_rank + self.qk_rope_head_dim
        if self.attention == "dsa":
            return latent + self.index_head_dim
        return latent

    def attention_param_count(self) -> FloatScalar:
        """Parameters of one attention block (projections only, norms ignored)."""
        d = self.hidden_size
        if self.attention == "gqa":
            q = d * self.num_heads * self.head_dim
            kv = 2.0 * d * self.num_kv_heads * self.head_dim
            o = self.num_heads * self.head_dim * d
            return q + kv + o
        qk_head = self.qk_nope_head_dim + self.qk_rope_head_dim
        has_q_lora = self.q_lora_rank > 0
        q = jnp.where(
            has_q_lora,
            d * self.q_lora_rank + self.q_lora_rank * self.num_heads * qk_head,
            d * self.num_heads * qk_head,
        )
        kv_a = d * (self.kv_lora_rank + self.qk_rope_head_dim)
        kv_b = self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)
        o = self.num_heads * self.v_head_dim * d
        total = q + kv_a + kv_b + o
        if self.attention == "dsa":
            # Indexer: wq_b (q_lora -> heads*dim), wk (d -> dim), head weights (d -> heads).
            total = total + (
                self.q_lora_rank * self.index_num_heads * self.index_head_dim
                + d * self.index_head_dim
                + d * self.index_num_heads
            )
        return total

    def dense_ffn_param_count(self) -> FloatScalar:
        mats = 3.0 if self.gated_mlp else 2.0
        return mats * self.hidden_size * self.ffn_intermediate

    def expert_param_count(self) -> FloatScalar:
        """Parameters of one routed (or shared) expert."""
        mats = 3.0 if self.gated_mlp else 2.0
        return mats * self.hidden_size * self.moe_intermediate

    def moe_layer_param_count(self) -> FloatScalar:
        router = self.hidden_size * self.num_experts
        experts = (self.num_experts + self.num_shared_experts) * self.expert_param_count()
        return router + experts

    def embedding_param_count(self) -> FloatScalar:
        emb = self.vocab_size * self.hidden_size
        return emb if self.tie_word_embeddings else 2.0 * emb

    def param_count(self) -> FloatScalar:
        """Total parameters (embeddings included)."""
        per_layer_attn = self.attention_param_count() * self.num_layers
        dense = self.dense_ffn_param_count() * self.num_dense_layers
        moe = self.moe_layer_param_count() * self.num_moe_layers if self.has_moe else 0.0
        return per_layer_attn + dense + moe + self.embedding_param_count()

    def active_param_count(self, include_input_embedding: bool = False) -> FloatScalar:
        """Parameters touched per token (routed experts counted top-k times).

        The input embedding table is a lookup that reads one row per token, so by default it is
        not counted (the LM head is); this is the convention of the DeepSeek-V3 report (36.6B
        activated, "including 0.9B for the output head") and of OpenAI's gpt-oss card (5.1B).
        Qwen and Mistral quote active counts that include the input table; pass
        ``include_input_embedding=True`` (static) to compare with those.
        """
        per_layer_attn = self.attention_param_count() * self.num_layers
        dense = self.dense_ffn_param_count() * self.num_dense_layers
        if self.has_moe:
            act = (self.experts_per_token + self.num_shared_experts) * self.expert_param_count()
            moe = (act + self.hidden_size * self.num_experts) * self.num_moe_layers
        else:
            moe = 0.0
        head = self.vocab_size * self.hidden_size
        emb = self.embedding_param_count() if include_input_embedding else head
        return per_layer_attn + dense + moe + emb

    def kv_cache_bytes_per_token(self, kv_bytes_per_elem: FloatScalarLike) -> FloatScalar:
        """KV-cache bytes one token occupies across all layers.

        ``kv_elems_per_token_per_layer() * num_layers * kv_bytes_per_elem`` (bytes). Sliding-
        window layers keep at most ``sliding_window_tokens`` tokens; this per-token figure does
        not apply that cap: a caller that sizes a cache for a context longer than the window
        counts ``num_sliding_layers`` layers at ``min(context, window)`` tokens itself.

        **Arguments:**
        - ``kv_bytes_per_elem``: bytes per cached element (2.0 for bf16, 1.0 for fp8).

        **Returns:** bytes per token (float scalar).
        """
        return self.kv_elems_per_token_per_layer() * self.num_layers * kv_bytes_per_elem
