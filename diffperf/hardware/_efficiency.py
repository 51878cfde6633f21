"""Efficiency parameters: the handful of physical numbers per op family that turn a roofline
into a prediction. Each family is its own module so that calibration can fit any subset.

Defaults live in ``hardware_presets/efficiency/<family>.toml``, one section per architecture
profile (``hopper``, ``blackwell``, ...), with the data they were fitted on named there.
"""

import equinox as eqx

from ._eff_attention import AttentionEfficiency as AttentionEfficiency
from ._eff_comm import CommEfficiency as CommEfficiency
from ._eff_gemm import GemmEfficiency as GemmEfficiency
from ._eff_moe import MoEEfficiency as MoEEfficiency


class Efficiency(eqx.Module):
    """All efficiency families of one device."""

    gemm: GemmEfficiency
    attention: AttentionEfficiency
    moe: MoEEfficiency
    comm: CommEfficiency


EFFICIENCY_FAMILIES: dict[str, type[eqx.Module]] = {
    "gemm": GemmEfficiency,
    "attention": AttentionEfficiency,
    "moe": MoEEfficiency,
    "comm": CommEfficiency,
}
