"""The registries configs build through, and the one function that builds a config entry.

``BUILDER`` builds anything a config declares with ``type=`` (a class, a function or a
classmethod such as ``AutoModelForCausalLM.from_pretrained``); ``MAP_FUNC`` names the
dataset map functions so that a config or a command line may refer to them by string.
``register_map_fn`` puts a map function in ``MAP_FUNC`` where it is defined, with the fields
of a raw row it reads.
"""
import torch
from mmengine.registry import Registry, build_from_cfg


def _build(cfg, registry, default_args=None):
    """Call ``cfg['type']`` with the other entries when it is a callable.

    mmengine's ``build_from_cfg`` first switches to the Runner's default scope
    ('mmengine'), which our stand-alone registries are not part of, and warns at every
    build; a config's ``type`` is nearly always the callable itself, so call it directly.
    Registered names (strings) still go through mmengine.
    """
    if not callable(cfg.get('type')):
        return build_from_cfg(cfg, registry, default_args)
    kwargs = dict(default_args or {})
    kwargs.update(cfg)
    return kwargs.pop('type')(**kwargs)


BUILDER = Registry('builder', build_func=_build)
MAP_FUNC = Registry('map_fn')


def register_map_fn(fields, alternative=()):
    """Register a dataset map function in ``MAP_FUNC`` under its own name, declaring once the
    fields of a raw row it reads.

    ``fields`` lists them ('input (optional)': a name, then a note for people); ``alternative``
    lists a second layout the function also reads. Error messages and ``xft
    list-dataset-format`` read them back from ``fn.fields`` and ``fn.alternative_fields``.

    Example::

        @register_map_fn(fields=('question', 'answer'))
        def law_reference_map_fn(example): ...
    """
    def register(map_fn):
        map_fn.fields = tuple(fields)
        map_fn.alternative_fields = tuple(alternative)
        MAP_FUNC.register_module(module=map_fn)
        return map_fn
    return register

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
