"""L1: kernel costs on one device and collectives over a fabric."""

from ._attention import (
    attended_pairs as attended_pairs,
    attention_decode_cost as attention_decode_cost,
    attention_prefill_cost as attention_prefill_cost,
    dsa_attended_tokens as dsa_attended_tokens,
    dsa_decode_cost as dsa_decode_cost,
    dsa_indexer_cost as dsa_indexer_cost,
    dsa_prefill_cost as dsa_prefill_cost,
    mla_cache_bytes_per_token as mla_cache_bytes_per_token,
    mla_decode_cost as mla_decode_cost,
    mla_module_cost as mla_module_cost,
    mla_prefill_cost as mla_prefill_cost,
)
from ._collectives import (
    all_gather_cost as all_gather_cost,
    all_reduce_cost as all_reduce_cost,
    all_to_all_cost as all_to_all_cost,
    moe_combine_cost as moe_combine_cost,
    moe_dispatch_cost as moe_dispatch_cost,
    p2p_cost as p2p_cost,
    reduce_scatter_cost as reduce_scatter_cost,
)
from ._cost import OpCost as OpCost, roofline_cost as roofline_cost, sum_costs as sum_costs
from ._elementwise import elementwise_cost as elementwise_cost, embedding_cost as embedding_cost
from ._gemm import gemm_cost as gemm_cost, gemm_costs as gemm_costs
from ._moe import (
    expected_experts_touched as expected_experts_touched,
    moe_layer_cost as moe_layer_cost,
)
