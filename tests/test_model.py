"""ModelSpec presets, Hugging Face config import and parameter/KV goldens.

Parameter counts exclude norms, biases, attention sinks and quantisation scales (each < 0.01 %
of the total for these models), so goldens derived by hand are exact (rtol 1e-9) and
comparisons with published figures use the rounding of the published figure plus that
omission (stated per case).
"""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from diffperf._resources import model_configs_dir
from diffperf.model import ModelSpec, from_hf_config, list_models, load_model


def _f(x) -> float:
    return float(jnp.asarray(x))


# ---------------------------------------------------------------------------------------------
# Every shipped preset loads
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_every_preset_loads(name):
    spec = load_model(name)
    assert isinstance(spec, ModelSpec)
    assert spec.name == name
    assert _f(spec.param_count()) > _f(spec.active_param_count()) > 0.0
    assert 0.0 <= _f(spec.num_dense_layers) <= _f(spec.num_layers)


def test_every_shipped_file_is_indexed():
    stems = {p.stem for p in model_configs_dir().glob("*.json")}
    indexed = {load_model(n).name for n in list_models()}
    assert len(stems) == len(list_models()) == len(indexed) == 13


# ---------------------------------------------------------------------------------------------
# Golden parameter counts
# ---------------------------------------------------------------------------------------------


def test_llama31_8b_exact():
    # d=4096, L=32, heads 32, kv 8, head 128, ffn 14336, vocab 128256 (config.json).
    # attn/layer = q d*4096 + kv 2*d*1024 + o 4096*d = 41,943,040
    # ffn/layer  = 3*d*14336                         = 176,160,768
    # embeddings = 2*128256*4096 (untied)            = 1,050,673,152
    # total = 32*(41,943,040 + 176,160,768) + 1,050,673,152 = 8,029,995,008
    spec = load_model("llama-3.1-8b")
    assert _f(spec.param_count()) == pytest.approx(8_029_995_008, rel=1e-12)
    # The checkpoint has 8,030,261,248 = the above + 65 RMSNorm weights of 4096 (266,240),
    # which are not modelled; Meta quotes 8.03B.
    assert _f(spec.param_count()) + 65 * 4096 == 8_030_261_248
    # Dense: touched per token = all but the input table (one row is read per token).
    assert _f(spec.active_param_count()) == pytest.approx(8_029_995_008 - 525_336_576, rel=1e-12)
    assert _f(spec.active_param_count(include_input_embedding=True)) == pytest.approx(
        8_029_995_008, rel=1e-12
    )


@pytest.mark.parametrize(
    "name, published",
    [
        # 70B: attn 80*(2*8192^2 + 2*8192*1024) = 12.08e9, ffn 80*3*8192*28672 = 56.37e9,
        # emb 2*128256*8192 = 2.10e9 -> 70.55e9; Meta model card 70.6B (rounded): rtol 0.2%.
        ("llama-3.1-70b", 70.6e9),
        # 405B: attn 126*(2*16384^2 + 2*16384*1024) = 71.87e9, ffn 126*3*16384*53248 =
        # 329.77e9, emb 2*128256*16384 = 4.20e9 -> 405.85e9; Meta: 405.9B (rounded).
        ("llama-3.1-405b", 405.9e9),
        # Qwen3-32B: 64*(2*5120*8192 + 2*5120*1024) + 64*3*5120*25600 + 2*151936*5120
        # = 6.04e9 + 25.17e9 + 1.56e9 = 32.76e9; Qwen3 card: 32.8B.
        ("qwen3-32b", 32.8e9),
    ],
)
def test_dense_totals_match_published(name, published):
    assert _f(load_model(name).param_count()) == pytest.approx(published, rel=2e-3)


def test_deepseek_v3_total_and_active():
    # MLA attention per layer (128 heads, q_lora 1536, kv_lora 512, nope 128, rope 64, v 128):
    #   q_a 7168*1536 = 11,010,048; q_b 1536*128*192 = 37,748,736;
    #   kv_a 7168*576 = 4,128,768;  kv_b 512*128*256 = 16,777,216; o 128*128*7168 = 117,440,512
    #   -> 187,105,280 per layer, x61 = 11,413,422,080
    # dense FFN (first 3 layers): 3*7168*18432 = 396,361,728, x3 = 1,189,085,184
    # expert: 3*7168*2048 = 44,040,192; MoE layer = (256+1)*44,040,192 + router 7168*256
    #   = 11,318,329,344 + 1,835,008 = 11,320,164,352, x58 = 656,569,532,416
    # embeddings 2*129280*7168 = 1,853,358,080
    # total = 671,025,397,760 (DeepSeek: 671B main model, MTP module excluded).
    spec = load_model("deepseek-v3")
    assert _f(spec.param_count()) == pytest.approx(671_025_397_760, rel=1e-12)
    assert _f(spec.param_count()) == pytest.approx(671e9, rel=1e-3)
    # Active: 11,413,422,080 + 1,189,085,184 + 58*(9*44,040,192 + 1,835,008)
    #   + head 129280*7168 = 36,624,596,992. DeepSeek-V3 README_WEIGHTS: 36.6B activated
    #   "including 0.9B for the output head" (input table not counted), rounded: rtol 0.2%.
    assert _f(spec.active_param_count()) == pytest.approx(36_624_596_992, rel=1e-12)
    assert _f(spec.active_param_count()) == pytest.approx(36.6e9, rel=2e-3)
    assert spec.attention == "mla" and spec.default_dtype == "fp8_block"
    assert _f(spec.num_dense_layers) == 3 and _f(spec.num_shared_experts) == 1


@pytest.mark.parametrize(
    "name, total, active, with_input_emb, rtol",
    [
        # Qwen3-30B-A3B: attn 48*(2*2048*4096 + 2*2048*512) = 0.906e9; experts
        # 48*128*3*2048*768 = 28.99e9; router 48*2048*128; emb 2*151936*2048 = 0.622e9 -> 30.53e9.
        # Active 0.906e9 + 48*8*4.72e6 + router + both tables = 3.35e9. Qwen's 30.5B / 3.3B
        # count the input table and are rounded to 0.1B: rtol 2%.
        ("qwen3-30b-a3b", 30.5e9, 3.3e9, True, 2e-2),
        # Qwen3-235B-A22B: card 235B / 22B (input table included), rounded: rtol 2%.
        ("qwen3-235b-a22b", 235e9, 22e9, True, 2e-2),
        # Mixtral: attn 32*41.9e6 = 1.34e9; experts 32*8*3*4096*14336 = 45.10e9; emb 0.26e9
        # -> 46.70e9; active 1.34e9 + 32*2*176.2e6 + emb = 12.88e9. Mistral: 46.7B / 12.9B
        # (input table included), rounded: rtol 0.5%.
        ("mixtral-8x7b", 46.7e9, 12.9e9, True, 5e-3),
        # gpt-oss-120b: attn 36*(2*2880*4096 + 2*2880*512) = 0.955e9; experts (gated, width
        # 2880) 36*128*3*2880^2 = 114.65e9; router 36*2880*128; emb 2*201088*2880 = 1.16e9
        # -> 116.79e9. OpenAI card 116.83B / 5.13B active (input table not counted); the 0.04%
        # gap is q/k/v/o and expert biases, sinks and norms, not modelled: rtol 0.5%.
        ("gpt-oss-120b", 116.83e9, 5.13e9, False, 5e-3),
        # Kimi-K2: as DeepSeek-V3 with 64 heads, 384 experts, 1 dense layer, vocab 163840:
        # attn 61*101,122,048 + dense 396,361,728 + 60*(385*44,040,192 + 7168*384)
        # + 2*163840*7168 = 1,026,407,202,816. The checkpoint holds 1,026,470,731,056 tensor
        # elements (public Kimi-K2-Instruct weight listing; the 0.006% extra is fp32 block scales
        # and norms), the card's "1T total / 32B activated" are rounded; active here
        # 31.69e9 (head counted, input table not): rtol 2% against 32e9.
        ("kimi-k2", 1_026_470_731_056, 32e9, False, 2e-2),
    ],
)
def test_moe_totals_and_active(name, total, active, with_input_emb, rtol):
    spec = load_model(name)
    assert spec.has_moe
    assert _f(spec.param_count()) == pytest.approx(total, rel=rtol)
    got = _f(spec.active_param_count(include_input_embedding=with_input_emb))
    assert got == pytest.approx(active, rel=rtol)


def test_kimi_k2_total_exact_and_close_to_checkpoint():
    spec = load_model("kimi-k2")
    assert _f(spec.param_count()) == pytest.approx(1_026_407_202_816, rel=1e-12)
    assert _f(spec.param_count()) == pytest.approx(1_026_470_731_056, rel=1e-4)
    assert _f(spec.num_dense_layers) == 1 and _f(spec.num_heads) == 64


def test_gpt_oss_structure():
    spec = load_model("gpt-oss-120b")
    assert spec.default_dtype == "mxfp4" and spec.gated_mlp and spec.attention == "gqa"
    assert _f(spec.num_sliding_layers) == 18 and _f(spec.sliding_window_tokens) == 128
    assert _f(spec.num_experts) == 128 and _f(spec.experts_per_token) == 4
    assert _f(spec.head_dim) == 64 and _f(spec.moe_intermediate) == 2880


def test_deepseek_v32_dsa():
    spec = load_model("deepseek-ai/DeepSeek-V3.2-Exp")
    assert spec.attention == "dsa"
    assert (_f(spec.index_topk), _f(spec.index_num_heads), _f(spec.index_head_dim)) == (
        2048.0,
        64.0,
        128.0,
    )
    # Indexer adds q_lora*64*128 + 7168*128 + 7168*64 = 13,959,168 per layer over V3.
    extra = _f(spec.param_count()) - _f(load_model("deepseek-v3").param_count())
    assert extra == pytest.approx(61 * 13_959_168, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# KV-cache bytes per token
# ---------------------------------------------------------------------------------------------


def test_kv_bytes_llama70b_bf16():
    # K and V: 2 * 8 kv heads * 128 dims * 80 layers * 2 B = 327,680 B/token.
    spec = load_model("llama-3.1-70b")
    assert _f(spec.kv_cache_bytes_per_token(2.0)) == 327_680.0


def test_kv_bytes_deepseek_v3_bf16():
    # MLA latent + rope key: (512 + 64) * 61 layers * 2 B = 70,272 B/token.
    spec = load_model("deepseek-v3")
    assert _f(spec.kv_cache_bytes_per_token(2.0)) == 70_272.0
    # DSA also caches the indexer key (128 per token per layer).
    v32 = load_model("deepseek-v3.2")
    assert _f(v32.kv_cache_bytes_per_token(2.0)) == (512 + 64 + 128) * 61 * 2


def test_kv_bytes_is_differentiable_in_dims():
    spec = load_model("llama-3.1-8b")
    g = jax.grad(lambda h: spec_with_heads(spec, h).kv_cache_bytes_per_token(2.0))(8.0)
    assert _f(g) == 2 * 128 * 32 * 2  # d(bytes)/d(kv_heads)


def spec_with_heads(spec, h):
    return eqx.tree_at(lambda s: s.num_kv_heads, spec, jnp.asarray(h))


# ---------------------------------------------------------------------------------------------
# Resolution and aliases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alias, short",
    [
        ("meta-llama/Llama-3.1-70B-Instruct", "llama-3.1-70b"),
        ("meta-llama/Meta-Llama-3.1-70B", "llama-3.1-70b"),
        ("META-LLAMA/LLAMA-3.1-8B", "llama-3.1-8b"),
        ("deepseek-ai/DeepSeek-R1", "deepseek-r1"),
        ("deepseek-ai/DeepSeek-V3.2-Exp", "deepseek-v3.2"),
        ("deepseek-ai/DeepSeek-V3.2", "deepseek-v3.2"),
        ("moonshotai/Kimi-K2-Instruct", "kimi-k2"),
        ("openai/gpt-oss-120b", "gpt-oss-120b"),
        ("Qwen/Qwen3-30B-A3B", "qwen3-30b-a3b"),
        ("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b"),
        ("Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
    ],
)
def test_aliases_resolve(alias, short):
    assert load_model(alias).name == short


def test_modelspec_passes_through():
    spec = load_model("mixtral-8x7b")
    assert load_model(spec) is spec


def test_path_and_folder(tmp_path):
    src = model_configs_dir() / "Qwen--Qwen3-32B.json"
    (tmp_path / "my-model").mkdir()
    cfg = tmp_path / "my-model" / "config.json"
    cfg.write_text(src.read_text())
    a, b = load_model(str(cfg)), load_model(tmp_path / "my-model")
    assert a.name == b.name == "my-model"
    assert _f(a.param_count()) == _f(load_model("qwen3-32b").param_count())


# ---------------------------------------------------------------------------------------------
# Field mapping rules
# ---------------------------------------------------------------------------------------------

_TINY_QWEN3_MOE = {
    "model_type": "qwen3_moe",
    "hidden_size": 64,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "intermediate_size": 96,
    "moe_intermediate_size": 16,
    "num_experts": 4,
    "num_experts_per_tok": 2,
}


def test_qwen3_moe_sparse_step_and_mlp_only_layers():
    # Layers 1,3,5,7 sparse by step 2; layer 3 forced dense -> 3 MoE, 5 dense.
    spec = from_hf_config(_TINY_QWEN3_MOE | {"decoder_sparse_step": 2, "mlp_only_layers": [3]})
    assert _f(spec.num_dense_layers) == 5
    assert _f(spec.head_dim) == 16  # defaults to hidden / heads


def test_deepseek_moe_layer_freq():
    cfg = json.loads((model_configs_dir() / "deepseek-ai--DeepSeek-V3.json").read_text())
    # Layers >= 3 with i % 2 == 0: 4, 6, ..., 60 -> 29 MoE, 32 dense.
    spec = from_hf_config(cfg | {"moe_layer_freq": 2})
    assert _f(spec.num_dense_layers) == 32


def test_dtype_mapping():
    base = _TINY_QWEN3_MOE
    assert from_hf_config(base).default_dtype == "bf16"
    assert from_hf_config(base | {"torch_dtype": "float16"}).default_dtype == "fp16"
    fp8 = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    assert from_hf_config(base | {"quantization_config": fp8}).default_dtype == "fp8_block"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_unknown_model_lists_known():
    with pytest.raises(ValueError, match="known: .*deepseek-v3"):
        load_model("no-such-model-7b")


def test_unsupported_model_type():
    with pytest.raises(ValueError, match="model_type='mamba' is not supported; supported: "):
        from_hf_config({"model_type": "mamba", "hidden_size": 8})


def test_malformed_json_names_file_and_position(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(ValueError, match=r"config\.json: malformed JSON at line 2, column"):
        load_model(str(bad))


@pytest.mark.parametrize("value", [-4096, 0])
def test_nonpositive_hidden_size(value):
    cfg = json.loads((model_configs_dir() / "meta-llama--Llama-3.1-8B.json").read_text())
    with pytest.raises(ValueError, match=f"hidden_size={value} must be > 0"):
        from_hf_config(cfg | {"hidden_size": value})


def test_missing_required_field():
    cfg = {k: v for k, v in _TINY_QWEN3_MOE.items() if k != "vocab_size"}
    with pytest.raises(ValueError, match="required field 'vocab_size' is missing"):
        from_hf_config(cfg)


def test_step3_mfa_as_gqa():
    # Step-3 (stepfun-ai/step3 model card, arXiv:2507.19427): 61 layers, 5 dense, 48 experts
    # top-3 + 1 shared, MFA with one 256-dim KV head. Mapped to GQA with num_kv_heads = 1, so
    # the KV cache is 2 x 256 values per token per layer (exact) and the total is the
    # published 316B plus the full-rank Q projection: 61 x (7168 x 16384 - (7168 x 2048 +
    # 2048 x 16384)) = 61 x 69.2M = 4.22B -> ~320.5B.
    spec = load_model("stepfun-ai/step3")
    assert spec.attention == "gqa" and spec.has_moe
    assert _f(spec.num_kv_heads) == 1 and _f(spec.head_dim) == 256
    assert _f(spec.num_moe_layers) == 56 and _f(spec.num_dense_layers) == 5
    assert _f(spec.num_experts) == 48 and _f(spec.experts_per_token) == 3
    assert _f(spec.num_shared_experts) == 1
    assert _f(spec.kv_elems_per_token_per_layer()) == 512
    low_rank_q = 7168 * 2048 + 2048 * 16384
    assert _f(spec.param_count()) == pytest.approx(
        316e9 + 61 * (7168 * 16384 - low_rank_q), rel=0.01
    )


def test_group_limited_routing_from_config(tmp_path):
    # DeepSeek-V3's config.json: n_group 8, topk_group 4; Kimi-K2: 1 and 1 (unrestricted)
    v3 = load_model("deepseek-v3")
    assert (float(v3.routing_groups), float(v3.routing_topk_groups)) == (8.0, 4.0)
    k2 = load_model("kimi-k2")
    assert (float(k2.routing_groups), float(k2.routing_topk_groups)) == (1.0, 1.0)
    cfg = json.loads((model_configs_dir() / "deepseek-ai--DeepSeek-V3.json").read_text())
    cfg["topk_group"] = 9
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="topk_group=9 must be <= n_group=8"):
        load_model(str(p))
