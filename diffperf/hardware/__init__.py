"""L0: accelerators, memory tiers, fabrics and their presets."""

from ._accelerator import (
    Accelerator as Accelerator,
    Fabric as Fabric,
    Hardware as Hardware,
    MemoryTier as MemoryTier,
)
from ._cost_model import (
    CostModel as CostModel,
    LinearCost as LinearCost,
    cost_model_report as cost_model_report,
    default_cost_model as default_cost_model,
    fit_cost_model as fit_cost_model,
)
from ._efficiency import (
    EFFICIENCY_FAMILIES as EFFICIENCY_FAMILIES,
    AttentionEfficiency as AttentionEfficiency,
    CommEfficiency as CommEfficiency,
    Efficiency as Efficiency,
    GemmEfficiency as GemmEfficiency,
    MoEEfficiency as MoEEfficiency,
)
from ._presets import (
    PresetError as PresetError,
    efficiency_profile as efficiency_profile,
    list_presets as list_presets,
    load_hardware as load_hardware,
)
