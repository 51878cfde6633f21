"""Locate data shipped with the package (works from an editable install and a wheel)."""

from pathlib import Path


_PKG = Path(__file__).resolve().parent


def presets_dir() -> Path:
    """Folder of hardware preset TOMLs.

    In a wheel, ``hardware_presets/`` is force-included as ``diffperf/_data/hardware_presets``;
    in a source checkout (editable install) it is the repository's top-level folder.
    """
    for cand in (_PKG / "_data" / "hardware_presets", _PKG.parent / "hardware_presets"):
        if (cand / "devices").is_dir():
            return cand
    raise FileNotFoundError(
        "diffperf's hardware_presets folder was not found next to the package; "
        "reinstall diffperf (pip install .)"
    )


def model_configs_dir() -> Path:
    """Folder of shipped Hugging Face config.json copies (inside the package)."""
    return _PKG / "model" / "configs"
