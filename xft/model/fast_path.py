"""The fast training path for a loaded Hugging Face causal LM (plain, LoRA or QLoRA).

`SupervisedFinetune` calls, after building the model and wrapping it with peft:

    state = apply_fast_path(llm, gradient_checkpointing=True)
    loss, n_tokens = causal_lm_loss(llm, input_ids, labels, attention_mask=..., position_ids=...)

and, before merging or handing the model to peft utilities that only know peft's own layer
classes, `state.restore(llm)`.

What it does, each step safe on CPU (torch fallbacks where Triton/CUDA are missing):

- frozen floating-point parameters (norms, embeddings, head) stay in the compute dtype; no
  fp32 upcast as `prepare_model_for_kbit_training` does, which turns hidden states fp32 and
  measured 2.3x slower at 8k tokens (DESIGN.md, Performance);
- activation checkpointing per decoder layer through `LayerCheckpointer`, with the saved
  inputs optionally parked in pinned host memory (`offload_checkpoints`);
- LoRA layers (one active adapter, plain or 4-bit base) become one autograd function each
  (`FusedLoRALinear`), and a SiLU-gated MLP whose three projections are such layers becomes
  one autograd function that keeps 2 x tokens x ffn for backward instead of 3
  (`FusedLoRAMLP`). Adapter dropout runs inside them with counter-based masks that the
  recomputation and CUDA graphs replay (`xft.model.kernels.dropout`): the model's
  `DropoutSeed` advances before each training forward of the decoder (a micro-batch);
- Llama-style RMSNorm and SiLU-gated MLP modules use fused Triton kernels, and Llama's
  attention applies RoPE with one (`FusedRoPEAttention`);
- `causal_lm_loss` takes the loss from the final hidden states in chunks
  (`xft.model.loss.linear_cross_entropy`) and never forms the full fp32 logits.
"""
import dataclasses
import functools
import importlib
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import nn

from .kernels import (FusedLoRALinear, FusedLoRAMLP, FusedRMSNorm, FusedRoPEAttention,
                      FusedSwiGLUMLP, LayerCheckpointer, restore_modules, swap_modules)
from .kernels.dropout import DropoutSeed, advance_before_each_forward
from .kernels.graphs import GraphFamily, LayerGraphs
from .kernels.swap import Replaced
from .loss import DEFAULT_CHUNK_TOKENS, linear_cross_entropy

# Norm and MLP classes whose math the fused modules reproduce exactly: RMSNorm as
# `w * (x * rsqrt(mean(x^2) + eps)).to(dtype)`, MLP as `down(act(gate(x)) * up(x))`.
# (Gemma's norm multiplies by 1 + w and is deliberately absent.)
_LLAMA_LIKE = ('llama', 'mistral', 'qwen2', 'qwen3', 'internlm2', 'mixtral', 'phi3')


def _classes(suffix: str) -> Tuple[type, ...]:
    found = []
    for family in _LLAMA_LIKE:
        try:
            mod = importlib.import_module(f'transformers.models.{family}.modeling_{family}')
        except ImportError:
            continue
        for name in dir(mod):
            obj = getattr(mod, name)
            if isinstance(obj, type) and name.lower() == f'{family}{suffix}':
                found.append(obj)
    return tuple(found)


RMSNORM_TYPES = _classes('rmsnorm')
MLP_TYPES = _classes('mlp')
# Attention is version- and family-specific (Mistral/Qwen2 pass a sliding window, Qwen3 has
# q/k norms): only Llama's, whose forward FusedRoPEAttention reproduces, is swapped.
ATTENTION_TYPES = tuple(t for t in _classes('attention') if t.__module__.endswith('llama'))


@dataclasses.dataclass
class FastPathState:
    """What `apply_fast_path` changed, to report it and to undo the module swaps."""
    lora: Replaced = dataclasses.field(default_factory=list)
    attention: Replaced = dataclasses.field(default_factory=list)
    norms: Replaced = dataclasses.field(default_factory=list)
    mlps: Replaced = dataclasses.field(default_factory=list)
    lora_mlps: Replaced = dataclasses.field(default_factory=list)
    checkpointed_layers: int = 0
    graphs: Optional[GraphFamily] = None
    recast_params: List[str] = dataclasses.field(default_factory=list)
    dropout_seed: DropoutSeed = dataclasses.field(default_factory=DropoutSeed)
    dropout_hook: Any = None  # the handle of the hook that advances dropout_seed

    def restore(self, llm: nn.Module) -> None:
        """Put back the original modules (before peft's merge or a plain HF save)."""
        # The LoRA layers inside a FusedLoRAMLP are the original MLP's too, so either order
        # of the MLP and LoRA restores gives back the same peft modules.
        for replaced in (self.mlps, self.lora_mlps, self.norms, self.attention, self.lora):
            restore_modules(llm, replaced)
        self.mlps, self.lora_mlps, self.norms, self.attention, self.lora = [], [], [], [], []
        if self.dropout_hook is not None:
            self.dropout_hook.remove()
            self.dropout_hook = None

    def summary(self) -> str:
        return (f'fast path: {len(self.lora)} LoRA layers fused, {len(self.norms)} RMSNorms, '
                f'{len(self.attention)} attentions (RoPE), '
                f'{len(self.mlps)} MLPs, {len(self.lora_mlps)} LoRA MLPs, '
                f'{self.checkpointed_layers} checkpointed layers'
                f'{" (CUDA graphs)" if self.graphs is not None else ""}, '
                f'{len(self.recast_params)} frozen params recast to the compute dtype'
                f'{", adapter dropout with replayable masks" if self.dropout_hook is not None else ""}')


def hf_model(llm: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or `llm` itself)."""
    get_base = getattr(llm, 'get_base_model', None)
    return get_base() if callable(get_base) else llm


def compute_dtype(llm: nn.Module) -> torch.dtype:
    """The dtype activations run in: that of the input embeddings."""
    return hf_model(llm).get_input_embeddings().weight.dtype


def keep_frozen_params_in(llm: nn.Module, dtype: torch.dtype) -> List[str]:
    """Cast frozen floating-point params of another float dtype (e.g. fp32 norms) to `dtype`.

    Quantized weights (integer storage) and trainable params (LoRA's fp32 master copy) are
    left alone. Returns the names of the params recast.
    """
    recast = []
    for name, param in llm.named_parameters():
        if param.requires_grad or not param.is_floating_point() or param.dtype == dtype:
            continue
        param.data = param.data.to(dtype)
        recast.append(name)
    return recast


def enable_layer_checkpointing(llm: nn.Module, offload: bool = False,
                               max_host_gib: Optional[float] = None,
                               graphs: Optional[GraphFamily] = None) -> int:
    """Checkpoint every decoder layer with `LayerCheckpointer`; returns how many.

    With `graphs`, each layer's passes replay as CUDA graphs where they can
    (`xft.model.kernels.graphs`), the eager checkpointer elsewhere.

    Uses transformers' own per-layer switch (`gradient_checkpointing` and
    `_gradient_checkpointing_func` on each `GradientCheckpointingLayer` instance). Models
    without such layers get transformers' non-reentrant checkpointing instead (0 returned).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer
    model = hf_model(llm)
    checkpointer = LayerCheckpointer(offload=offload, max_host_gib=max_host_gib)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = (checkpointer if graphs is None else
                                              LayerGraphs(checkpointer, layer, graphs))
    if not layers:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={'use_reentrant': False})
    if getattr(model.config, 'use_cache', None):
        model.config.use_cache = False
    return len(layers)


def has_adapter_dropout(llm: nn.Module) -> bool:
    """True if a LoRA layer of `llm` has adapter dropout (peft's `lora_dropout` > 0)."""
    types = _lora_types()
    for module in llm.modules():
        if types and isinstance(module, types) or isinstance(module, FusedLoRALinear):
            for dropout in getattr(module, 'lora_dropout', {}).values():
                if float(getattr(dropout, 'p', 0.0) or 0.0) > 0:
                    return True
    return False


def _lora_types() -> Tuple[type, ...]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is pinned
        return ()
    return (LoraLayer, )


def apply_fast_path(llm: nn.Module,
                    gradient_checkpointing: bool = True,
                    offload_checkpoints: bool = False,
                    offload_max_host_gib: Optional[float] = None,
                    fused_lora: bool = True,
                    fused_kernels: bool = True,
                    cuda_graphs: Union[bool, GraphFamily] = False) -> FastPathState:
    """Prepare `llm` (a transformers causal LM, optionally peft-wrapped) for fast training.

    Call it after `get_peft_model` and before building the optimizer; do not call
    `prepare_model_for_kbit_training`. The model must be in training mode when stepping
    (`llm.train()`), as for any checkpointed transformers model. `cuda_graphs` (True or a
    `GraphFamily`) records checkpointed layers as CUDA graphs where that is exact.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...                   num_hidden_layers=2, num_attention_heads=2)
    >>> state = apply_fast_path(LlamaForCausalLM(cfg))
    >>> state.summary()
    'fast path: 0 LoRA layers fused, 5 RMSNorms, 2 attentions (RoPE), 2 MLPs, 0 LoRA MLPs, 2 checkpointed layers, 0 frozen params recast to the compute dtype'
    """
    state = FastPathState()
    state.recast_params = keep_frozen_params_in(llm, compute_dtype(llm))
    if gradient_checkpointing:
        if cuda_graphs:
            state.graphs = cuda_graphs if isinstance(cuda_graphs, GraphFamily) else GraphFamily()
        state.checkpointed_layers = enable_layer_checkpointing(llm, offload_checkpoints,
                                                               offload_max_host_gib, state.graphs)
    seed = state.dropout_seed
    if fused_lora and fused_kernels and _lora_types() and MLP_TYPES:
        # Before the LoRA swap, so from_module sees peft's layers and checks them itself;
        # the swap below then also replaces the layers inside, which FusedLoRAMLP accepts.
        state.lora_mlps = swap_modules(llm, MLP_TYPES,
                                       functools.partial(FusedLoRAMLP.from_module, dropout_seed=seed))
    if fused_lora and _lora_types():
        state.lora = swap_modules(llm, _lora_types(),
                                  functools.partial(FusedLoRALinear.from_module, dropout_seed=seed))
    if fused_kernels:
        if RMSNORM_TYPES:
            state.norms = swap_modules(llm, RMSNORM_TYPES, FusedRMSNorm.from_module)
        if MLP_TYPES:  # those FusedLoRAMLP did not take (no LoRA, a bias, ...)
            state.mlps = swap_modules(llm, MLP_TYPES, FusedSwiGLUMLP.from_module)
        if ATTENTION_TYPES:
            state.attention = swap_modules(llm, ATTENTION_TYPES,
                                           functools.partial(FusedRoPEAttention.from_module,
                                                             dropout_seed=seed))
    if has_adapter_dropout(llm):
        # Once per micro-batch, outside the recorded layers: the forward and its
        # recomputation then read the same seed, and the next micro-batch a new one.
        model = hf_model(llm)
        decoder = model.get_decoder() if callable(getattr(model, 'get_decoder', None)) else model
        state.dropout_hook = advance_before_each_forward(decoder, seed)
    return state


def _plain_head(model: nn.Module) -> Optional[nn.Linear]:
    """The LM head if it is a plain bias-free linear layer and logits need no post-processing."""
    head = model.get_output_embeddings()
    cfg = model.config
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return None
    if getattr(cfg, 'final_logit_softcapping', None) or getattr(cfg, 'logit_scale', None):
        return None
    return head


def causal_lm_loss(llm: nn.Module,
                   input_ids: torch.Tensor,
                   labels: torch.Tensor,
                   num_items_in_batch: Optional[int] = None,
                   chunk_tokens: Optional[int] = DEFAULT_CHUNK_TOKENS,
                   **forward_kwargs) -> Tuple[torch.Tensor, int]:
    """Causal-LM loss of `llm` on one batch without full logits; returns `(loss, n_tokens)`.

    `forward_kwargs` (attention_mask, position_ids, ...) go to the decoder. Models whose head
    is not a plain linear layer (LoRA on lm_head, logit soft-capping) fall back to the
    model's own forward with `labels`.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...                   num_hidden_layers=1, num_attention_heads=2)
    >>> model = LlamaForCausalLM(cfg)
    >>> ids = torch.randint(0, 64, (1, 6))
    >>> loss, n = causal_lm_loss(model, ids, ids)
    >>> n, bool(torch.allclose(loss, model(input_ids=ids, labels=ids).loss, atol=1e-5))
    (5, True)
    """
    model = hf_model(llm)
    head = _plain_head(model)
    if head is None:
        out = llm(input_ids=input_ids, labels=labels, **forward_kwargs)
        from .loss import shift_labels
        from xft.utils.constants import IGNORE_INDEX
        return out.loss, int((shift_labels(labels) != IGNORE_INDEX).sum())
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False,
                                 **forward_kwargs).last_hidden_state
    return linear_cross_entropy(hidden, head.weight, labels, num_items_in_batch, chunk_tokens)
