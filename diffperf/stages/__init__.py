"""L2: one iteration of a whole model under a parallel plan."""

from ._estimate import Estimate as Estimate, estimate as estimate, mean_tpot_s as mean_tpot_s
from ._plan import (
    ParallelPlan as ParallelPlan,
    PlanError as PlanError,
    check_plan as check_plan,
    make_plan as make_plan,
)
from ._step import (
    BatchShape as BatchShape,
    Breakdown as Breakdown,
    MemoryUsage as MemoryUsage,
    StepResult as StepResult,
    decode_batch as decode_batch,
    dense_ffn_block as dense_ffn_block,
    gated as gated,
    gqa_attention_block as gqa_attention_block,
    iteration as iteration,
    memory_usage as memory_usage,
    mixed_batch as mixed_batch,
    mla_attention_block as mla_attention_block,
    prefill_batch as prefill_batch,
    tp_all_reduce as tp_all_reduce,
)
