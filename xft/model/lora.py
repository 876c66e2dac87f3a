"""Attaching LoRA adapters through peft."""
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from xft.registry import build_nested
from xft.utils.errors import ConfigError

# Linear layer classes of bitsandbytes count as linear layers too.
try:
    import bitsandbytes as bnb
    _LINEAR_TYPES = (nn.Linear, bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
except ImportError:  # bitsandbytes is a required dependency; this keeps import errors local
    _LINEAR_TYPES = (nn.Linear,)


def find_all_linear_names(model: nn.Module) -> list:
    """Names (last path component) of every linear layer except the output head.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                                      num_attention_heads=2, vocab_size=64))
    >>> find_all_linear_names(llama)
    ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']
    """
    head = model.get_output_embeddings() if hasattr(model, 'get_output_embeddings') else None
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, _LINEAR_TYPES) and module is not head:
            names.add(full_name.split('.')[-1])
    return sorted(names)


def build_lora_config(lora, model: nn.Module) -> LoraConfig:
    """A ``LoraConfig`` from a config dict (or one given), targeting all linear layers by default."""
    config = build_nested(lora) if isinstance(lora, dict) else lora
    if not isinstance(config, LoraConfig):
        raise ConfigError(f'model.lora: expected a dict with type=LoraConfig or a LoraConfig, got {type(config).__name__}')
    if config.target_modules is None:
        config.target_modules = find_all_linear_names(model)
    return config


def attach_lora(model: nn.Module, lora) -> nn.Module:
    """Wrap ``model`` in a ``PeftModel`` whose only trainable weights are the adapters.

    The adapters' initial weights come from the run's seed alone (``torch.initial_seed()``,
    which mmengine's ``randomness.seed`` sets), drawn apart from the global stream: Runner and
    DeepSpeed's FlexibleRunner build the model after different draws, and the same seed must
    give the same start under both.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(torch.initial_seed())
        return get_peft_model(model, build_lora_config(lora, model))
