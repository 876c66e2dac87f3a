"""Preparing a bitsandbytes-quantized model for LoRA training.

We do not use peft's ``prepare_model_for_kbit_training``: it casts every non-quantized
parameter (norms, embeddings, head) to fp32, hidden states then turn fp32, and attention
falls off the fast bf16 kernels (measured: QLoRA at 8k tokens runs at 44% of LoRA's speed).
Freezing the base is all LoRA training needs.
"""
from torch import nn


def is_quantized(model: nn.Module) -> bool:
    """True when the model was loaded through a bitsandbytes quantization config."""
    return bool(getattr(model, 'is_loaded_in_4bit', False) or getattr(model, 'is_loaded_in_8bit', False)
                or getattr(model, 'quantization_method', None) is not None)


def freeze_base(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def keep_4bit_weights_trainable_on_cpu(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights into a CPU inference format.

    After any forward in eval mode without grad (a ``generate()`` in a chat hook),
    bitsandbytes 0.50 repacks ``Linear4bit`` weights in place into a CPU layout that has no
    autograd path: every LoRA grad then becomes None and nothing raises. The flag is an
    attribute of each layer, so we clear it on this model's layers only. Returns how many
    layers were changed.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, 'support_avx512bf16_for_cpu', False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed
