"""Shipped model presets: Hugging Face ``config.json`` copies in ``diffperf/model/configs``.

Each file is named after its Hugging Face repo id with ``/`` replaced by ``--``. A preset is
found by its repo id, a common variant of it (Instruct, ``Meta-`` prefix, -Exp) or a short
name, case-insensitively. Provenance: see ``_diffperf_note`` inside a file where the file is a
transcription rather than a verbatim copy (the report of the session that added them lists the
public copies each one was checked against).
"""

import os
from pathlib import Path

from .._resources import model_configs_dir
from ._hf import from_hf_config
from ._spec import ModelSpec


# file stem (repo id with / -> --) -> (short name, *aliases). The repo id itself, and the
# part after the slash, always resolve too.
_PRESETS: dict[str, tuple[str, ...]] = {
    "meta-llama--Llama-3.1-8B": (
        "llama-3.1-8b",
        "llama3.1-8b",
        "meta-llama/Llama-3.1-8B-Instruct",
        "meta-llama/Meta-Llama-3.1-8B",
        "meta-llama/Meta-Llama-3.1-8B-Instruct",
    ),
    "meta-llama--Llama-3.1-70B": (
        "llama-3.1-70b",
        "llama3.1-70b",
        "meta-llama/Llama-3.1-70B-Instruct",
        "meta-llama/Meta-Llama-3.1-70B",
        "meta-llama/Meta-Llama-3.1-70B-Instruct",
    ),
    "meta-llama--Llama-3.1-405B": (
        "llama-3.1-405b",
        "llama3.1-405b",
        "meta-llama/Llama-3.1-405B-Instruct",
        "meta-llama/Meta-Llama-3.1-405B",
        "meta-llama/Meta-Llama-3.1-405B-Instruct",
    ),
    "Qwen--Qwen3-32B": ("qwen3-32b",),
    "Qwen--Qwen3-30B-A3B": (
        "qwen3-30b-a3b",
        "Qwen/Qwen3-30B-A3B-Instruct-2507",
        "Qwen/Qwen3-30B-A3B-Base",
    ),
    "Qwen--Qwen3-235B-A22B": (
        "qwen3-235b-a22b",
        "Qwen/Qwen3-235B-A22B-Instruct-2507",
    ),
    "mistralai--Mixtral-8x7B-v0.1": (
        "mixtral-8x7b",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
    ),
    "openai--gpt-oss-120b": ("gpt-oss-120b",),
    "deepseek-ai--DeepSeek-V3": (
        "deepseek-v3",
        "deepseek-ai/DeepSeek-V3-Base",
        "deepseek-ai/DeepSeek-V3-0324",
    ),
    "deepseek-ai--DeepSeek-R1": (
        "deepseek-r1",
        "deepseek-ai/DeepSeek-R1-0528",
    ),
    "deepseek-ai--DeepSeek-V3.2-Exp": (
        "deepseek-v3.2",
        "deepseek-v3.2-exp",
        "deepseek-ai/DeepSeek-V3.2",
    ),
    "stepfun-ai--step3": (
        "step3",
        "step-3",
        "stepfun-ai/step3-fp8",
    ),
    "moonshotai--Kimi-K2-Instruct": (
        "kimi-k2",
        "kimi-k2-instruct",
        "moonshotai/Kimi-K2-Base",
        "moonshotai/Kimi-K2-Instruct-0905",
    ),
}


def _index() -> dict[str, str]:
    """Lower-cased name/alias/repo id -> file stem."""
    idx: dict[str, str] = {}
    for stem, aliases in _PRESETS.items():
        repo = stem.replace("--", "/", 1)
        for key in (stem, repo, repo.split("/", 1)[1], *aliases):
            idx[key.lower()] = stem
            if "/" in key:  # "Llama-3.1-70B-Instruct" without its org also works
                idx.setdefault(key.split("/", 1)[1].lower(), stem)
    return idx


_INDEX = _index()


def list_models() -> list[str]:
    """Short names of the shipped model presets (each also resolves by its repo id)."""
    return [aliases[0] for aliases in _PRESETS.values()]


def _preset_path(stem: str) -> Path:
    return model_configs_dir() / f"{stem}.json"


def load_model(model: "ModelSpec | str | os.PathLike") -> ModelSpec:
    """Resolve a model: a `ModelSpec`, a config path, or a known name / repo id.

    **Arguments:**
    - ``model``: a `ModelSpec` (returned unchanged); a path to a ``config.json`` or a folder
      containing one (parsed with `from_hf_config`); or a preset name or Hugging Face repo id
      (case-insensitive, e.g. ``"deepseek-v3"``, ``"meta-llama/Llama-3.1-70B-Instruct"``).

    **Returns:** a `ModelSpec`.

    **Raises:** ``ValueError`` listing the known models when nothing matches.
    """
    if isinstance(model, ModelSpec):
        return model
    if not isinstance(model, str | os.PathLike):
        raise ValueError(
            f"load_model expects a ModelSpec, a path or a model name; got {type(model).__name__}"
        )
    key = os.fspath(model)
    stem = _INDEX.get(key.strip().lower())
    if stem is not None:
        return from_hf_config(_preset_path(stem), name=list_models()[list(_PRESETS).index(stem)])
    path = Path(key).expanduser()
    if path.is_file() or (path.is_dir() and (path / "config.json").is_file()):
        return from_hf_config(path)
    known = ", ".join(
        f"{aliases[0]} ({stem.replace('--', '/', 1)})" for stem, aliases in _PRESETS.items()
    )
    raise ValueError(
        f"unknown model {key!r}: not a config.json path and not a known model; known: {known}"
    )
