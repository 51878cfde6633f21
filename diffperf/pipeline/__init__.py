"""L3: multi-stage heterogeneous inference pipelines (RAG, KV retrieval from memory tiers,
reasoning, agent loops, routers; CPUs, GPUs and ASICs) — HERMES-style analytical model."""

from ._config import (
    SMALL_MODELS as SMALL_MODELS,
    PipelineConfigError as PipelineConfigError,
    list_examples as list_examples,
    load_pipeline as load_pipeline,
    pipeline_report as pipeline_report,
)
from ._des import simulate as simulate, simulate_pipeline as simulate_pipeline
from ._kv_tiers import (
    TIER_NAMES as TIER_NAMES,
    KVTier as KVTier,
    breakeven_bandwidth_bytes_per_s as breakeven_bandwidth_bytes_per_s,
    default_kv_tiers as default_kv_tiers,
    kv_fetch_s as kv_fetch_s,
    tier_fetch_s as tier_fetch_s,
)
from ._pipeline import (
    BATCHING_KINDS as BATCHING_KINDS,
    Batching as Batching,
    Engine as Engine,
    Pipeline as Pipeline,
    PipelineDesign as PipelineDesign,
    PipelineError as PipelineError,
    PipelineResult as PipelineResult,
    PipelineSLO as PipelineSLO,
    PlacedStage as PlacedStage,
    Route as Route,
    apply_design as apply_design,
    design_loss as design_loss,
    evaluate as evaluate,
    initial_design as initial_design,
    objective as objective,
    topo_order as topo_order,
    visit_ratios as visit_ratios,
)
from ._stages import (
    STAGE_TYPES as STAGE_TYPES,
    AbstractStage as AbstractStage,
    AgentLoop as AgentLoop,
    CPUWork as CPUWork,
    Decode as Decode,
    Encode as Encode,
    KVRetrieval as KVRetrieval,
    Prefill as Prefill,
    StageCost as StageCost,
    VectorSearch as VectorSearch,
)
from ._vector_search import (
    INDEX_KINDS as INDEX_KINDS,
    VectorIndex as VectorIndex,
    index_memory_bytes as index_memory_bytes,
    search_work as search_work,
    vector_search_cost as vector_search_cost,
)
