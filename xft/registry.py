"""The registries configs build through, and the one function that builds a config entry.

``BUILDER`` builds anything a config declares with ``type=`` (a class, a function or a
classmethod such as ``AutoModelForCausalLM.from_pretrained``); ``MAP_FUNC`` names the
dataset map functions so that a config or a command line may refer to them by string.
"""
import torch
from mmengine.registry import Registry

BUILDER = Registry('builder')
MAP_FUNC = Registry('map_fn')

_DTYPE_PREFIX = 'torch.'


def _as_dtype(value):
    """Turn a dtype string such as ``'torch.bfloat16'`` into the dtype; else return it."""
    if isinstance(value, str) and value.startswith(_DTYPE_PREFIX):
        candidate = getattr(torch, value[len(_DTYPE_PREFIX):], None)
        if isinstance(candidate, torch.dtype):
            return candidate
    return value


def build_nested(value):
    """Build a config value bottom-up.

    Dicts carrying ``type`` are built through ``BUILDER`` after their own values are
    built, so ``quantization_config=dict(type=BitsAndBytesConfig, ...)`` inside an llm
    dict arrives as a ``BitsAndBytesConfig``. Dtype strings become ``torch.dtype``s.
    Anything else is returned as it is. The input is never modified.
    """
    if isinstance(value, dict):
        built = {key: build_nested(item) for key, item in value.items()}
        if 'type' in built:
            return BUILDER.build(built)
        return built
    if isinstance(value, (list, tuple)):
        return type(value)(build_nested(item) for item in value)
    return _as_dtype(value)
