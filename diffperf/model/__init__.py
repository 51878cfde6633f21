"""L0: model architecture (ModelSpec), Hugging Face config.json import and shipped presets."""

from ._hf import (
    SUPPORTED_MODEL_TYPES as SUPPORTED_MODEL_TYPES,
    from_hf_config as from_hf_config,
)
from ._presets import list_models as list_models, load_model as load_model
from ._scale import ScaleError as ScaleError, scale_model as scale_model
from ._spec import ATTENTION_KINDS as ATTENTION_KINDS, ModelSpec as ModelSpec
