"""Fused ops for training: each file holds one op (function, autograd, module wrapper).

Every op falls back to plain torch where Triton or CUDA is missing, so the same model code
runs on the CPU test machines. `swap_modules` applies a module to one model instance.
"""
from .backend import use_triton
from .checkpoint import LayerCheckpointer
from .lora_linear import FusedLoRALinear, lora_linear
from .lora_mlp import FusedLoRAMLP, lora_mlp
from .rms_norm import FusedRMSNorm, rms_norm, rms_norm_reference
from .rope import FusedRoPEAttention, rope, rope_reference
from .swap import restore_modules, swap_modules
from .swiglu import (FusedSwiGLUMLP, swiglu, swiglu_packed, swiglu_packed_backward_,
                     swiglu_reference)

__all__ = [
    'use_triton', 'LayerCheckpointer', 'FusedLoRALinear', 'lora_linear', 'FusedLoRAMLP',
    'lora_mlp', 'FusedRMSNorm', 'rms_norm', 'rms_norm_reference', 'FusedRoPEAttention', 'rope',
    'rope_reference', 'restore_modules', 'swap_modules', 'FusedSwiGLUMLP', 'swiglu',
    'swiglu_packed', 'swiglu_packed_backward_', 'swiglu_reference'
]
