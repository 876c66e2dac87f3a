"""The registries configs build through.

``BUILDER`` builds anything a config declares with ``type=`` (a class, a function or a
classmethod such as ``AutoModelForCausalLM.from_pretrained``); ``MAP_FUNC`` names the
dataset map functions so that a config or a command line may refer to them by string.
"""
from mmengine.registry import Registry

BUILDER = Registry('builder')
MAP_FUNC = Registry('map_fn')
