"""The reference model of DPO: the base with its LoRA adapters switched off, or a frozen copy.

With LoRA the reference is the very model being trained, with every adapter's contribution
switched off for one forward (``adapters_off``): no second copy of the weights in memory. peft's
``disable_adapter`` does that for peft's own layers, but the fast path replaces them with fused
modules peft no longer sees (``xft.model.kernels``: ``FusedLoRALinear``, ``FusedLoRAMLP``,
``FusedRoPEAttention``'s q/k/v projections). Each of those adds ``scaling * (x A^T) B^T`` to the
frozen layer's output with a Python-float scaling read at every forward, so setting those
scalings to 0 for the reference forward leaves exactly the frozen layers. Full fine-tuning
needs a frozen copy (``frozen_copy``), or a separate ``ref_llm``.

``reference_forward`` runs the forward in eval mode without gradients: no dropout, no
activation checkpointing (and so no CUDA-graph replay), nothing kept for backward.
"""
import contextlib
import copy

import torch
from torch import nn

from .kernels import FusedLoRALinear, FusedLoRAMLP, FusedRoPEAttention

# (module type, attribute holding its adapter scaling(s)), for the fast path's fused modules.
_FUSED_SCALINGS = ((FusedLoRALinear, 'scaling'), (FusedLoRAMLP, 'scalings'),
                   (FusedRoPEAttention, 'qkv_scalings'))


def _zeroed(value):
    return tuple(0.0 for _ in value) if isinstance(value, tuple) else 0.0


@contextlib.contextmanager
def adapters_off(llm: nn.Module):
    """Within the block, ``llm`` computes as its base model: no LoRA adapter contributes."""
    saved = []
    for module in llm.modules():
        for module_type, name in _FUSED_SCALINGS:
            if isinstance(module, module_type) and getattr(module, name, None) is not None:
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, _zeroed(getattr(module, name)))
    try:
        with _peft_layers_off(llm):
            yield llm
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _peft_layers_off(llm):
    """peft's own switch for the LoRA layers the fast path left in place (peft refuses it when
    none is left: all were fused)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    disable = getattr(llm, 'disable_adapter', None)
    if callable(disable) and any(isinstance(m, BaseTunerLayer) for m in llm.modules()):
        return disable()
    return contextlib.nullcontext()


@contextlib.contextmanager
def reference_forward(llm: nn.Module):
    """Eval mode and no gradients for the block; each module's own mode is put back after."""
    modes = [(module, module.training) for module in llm.modules()]
    llm.eval()
    try:
        with torch.no_grad():
            yield llm
    finally:
        for module, training in modes:
            module.training = training


def frozen_copy(llm: nn.Module) -> nn.Module:
    """A frozen copy of ``llm`` to serve as the reference of a fully fine-tuned policy."""
    reference = copy.deepcopy(llm)
    freeze(reference)
    return reference


def freeze(llm: nn.Module) -> nn.Module:
    for param in llm.parameters():
        param.requires_grad_(False)
    return llm.eval()
