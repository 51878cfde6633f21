"""L0: accelerators, memory tiers, fabrics and their presets."""

from ._accelerator import (
    Accelerator as Accelerator,
    Fabric as Fabric,
    Hardware as Hardware,
    MemoryTier as MemoryTier,
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
