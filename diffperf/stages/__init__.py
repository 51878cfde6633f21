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
    iteration as iteration,
    memory_usage as memory_usage,
    mixed_batch as mixed_batch,
    prefill_batch as prefill_batch,
)
