"""SupervisedFinetune: an HF causal LM (+ LoRA, + 4/8-bit) as an mmengine model."""
from collections import OrderedDict

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import nn

from xft.registry import build_nested
from xft.utils.errors import ConfigError

from .fast_path import apply_fast_path, causal_lm_loss
from .adapter_start import (check_adapter_agrees, load_adapter_weights, read_adapter_config,
                            refuse_without_lora)
from .long_context import linear_rope_scaling
from .lora import attach_lora, build_lora_config
from .loss import count_trained_tokens
from .packed_attention import VARLEN_ATTENTION_NAME, choose_packed_attention, packed_attention_kwargs
from .quantization import freeze_base, is_quantized, keep_4bit_weights_trainable_on_cpu
from .sequence_parallel import SequenceParallel
from .vocab import embedding_rows_for, grow_embeddings, tokenizer_length, train_new_rows

# XTuner 0.1.23's arguments, then xft's speed switches (mmengine adds the last two).
SUPERVISED_FINETUNE_ARGUMENTS = ('llm', 'lora', 'peft_model', 'use_activation_checkpointing', 'use_varlen_attn',
                                 'tokenizer', 'max_position_embeddings', 'use_fast_path', 'cuda_graphs',
                                 'data_preprocessor', 'init_cfg')


def build_llm(llm) -> nn.Module:
    """Build the HF model from its config dict (or take a built one as it is).

    ``llm`` is XTuner's dict, for example
    ``dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=...,
    torch_dtype='torch.bfloat16', quantization_config=dict(type=BitsAndBytesConfig, ...))``.
    transformers 5 renamed ``torch_dtype`` to ``dtype``; both spellings are accepted.
    """
    if isinstance(llm, nn.Module):
        return llm
    if not isinstance(llm, dict) or 'type' not in llm:
        raise ConfigError(f'model.llm: expected a dict with a type (e.g. AutoModelForCausalLM.from_pretrained), got {llm!r}')
    llm = dict(llm)
    if 'torch_dtype' in llm:
        llm.setdefault('dtype', llm.pop('torch_dtype'))
    if llm.get('attn_implementation') in FLASH_ATTENTION_PACKAGES and not _flash_attention_installed(
            llm['attn_implementation']):
        # XTuner's configs ask for flash_attention_2 and XTuner itself fell back to SDPA where
        # flash-attn was missing; transformers stops with an ImportError instead.
        print_log(f"model.llm.attn_implementation={llm['attn_implementation']!r}: "
                  f"{FLASH_ATTENTION_PACKAGES[llm['attn_implementation']]} is not installed here; using 'sdpa' "
                  '(exact attention too; packed rows keep their boundaries)', logger='current')
        llm['attn_implementation'] = 'sdpa'
    return build_nested(llm)


FLASH_ATTENTION_PACKAGES = {'flash_attention_2': 'flash-attn 2', 'flash_attention_3': 'flash-attn 3'}


def _flash_attention_installed(name) -> bool:
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available
    return (is_flash_attn_2_available if name == 'flash_attention_2' else is_flash_attn_3_available)()


class SupervisedFinetune(BaseModel):
    """Supervised fine-tuning of a causal LM: full, LoRA, or QLoRA (LoRA over a quantized base).

    Args:
        llm: the HF model's config dict (XTuner vocabulary) or a built model.
        lora: a ``LoraConfig`` dict; ``None`` trains every weight (full fine-tuning).
            Target modules default to every linear layer except the output head.
        use_activation_checkpointing: recompute activations in the backward pass to save memory.
        use_varlen_attn: XTuner's switch for variable-length attention. Packed rows get
            boundary-respecting attention whatever its value (see ``forward_kwargs``); on a
            GPU whose torch has ``varlen_attn``, an SDPA model runs packed rows through it
            (``xft.model.packed_attention.choose_packed_attention``).
        use_fast_path: fused LoRA/RMSNorm/SwiGLU/RoPE modules, per-layer checkpointing and a
            chunked loss that never forms the full fp32 logits (``xft.model.fast_path``).
            The loss and gradients equal the plain path's to float tolerance.
        cuda_graphs: with the fast path on a GPU, replay each checkpointed layer's passes as
            CUDA graphs where that is exact (no foreign dropout, one process or StepDataParallel,
            rows of at most 4,096 tokens, where kernel launches rather than arithmetic bound the step);
            ``xft.model.kernels.graphs`` says when they stay off. Off under sequence parallelism.
        peft_model: a PEFT LoRA adapter folder to continue training from; ``lora`` must
            describe it (``xft.model.adapter_start``).
        tokenizer: the tokenizer (or its config dict); when it has more tokens than the model
            has embedding rows, the embeddings grow to it and the new rows train, under LoRA
            too (``xft.model.vocab``).
        max_position_embeddings: beyond the model's own, RoPE is scaled linearly as XTuner
            did, before the model is built (``xft.model.long_context``).

    Any other argument is refused in one line: XTuner 0.1.23's SupervisedFinetune takes
    exactly ``llm, lora, peft_model, use_activation_checkpointing, use_varlen_attn, tokenizer,
    max_position_embeddings``, and all are honoured.

    Under sequence parallelism (a config's ``sequence_parallel_size`` above 1, whose groups
    ``xft train`` sets up before the model is built) each rank trains its piece of every row
    and the loss is the whole row's (``xft.model.sequence_parallel``).
    """

    def __init__(self, llm, lora=None, peft_model=None, use_activation_checkpointing=True,
                 use_varlen_attn=False, tokenizer=None, max_position_embeddings=None,
                 use_fast_path=True, cuda_graphs=True, data_preprocessor=None, init_cfg=None, **unknown):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if unknown:
            raise ConfigError(f'model: SupervisedFinetune has no argument {", ".join(sorted(unknown))}; it takes '
                              f'{", ".join(SUPERVISED_FINETUNE_ARGUMENTS)}')
        if peft_model is not None and lora is None:
            refuse_without_lora(peft_model)
        if max_position_embeddings is not None:
            llm = with_rope_scaled_to(llm, max_position_embeddings)
        llm = build_llm(llm)
        if choose_packed_attention(llm) == VARLEN_ATTENTION_NAME:
            print_log('SupervisedFinetune: packed rows attend through torch\'s varlen_attn '
                      f'({VARLEN_ATTENTION_NAME}), other batches through SDPA', logger='current')
        self.sequence_parallel = SequenceParallel.prepare(llm)
        if self.sequence_parallel is not None:
            print_log(f'SupervisedFinetune: {self.sequence_parallel.summary()}', logger='current')
        quantized = is_quantized(llm)
        if quantized and lora is None:
            raise ConfigError('model: a quantized llm (quantization_config) can only be trained with LoRA; '
                              'set model.lora or drop the quantization_config')
        grown = grow_to_tokenizer(llm, tokenizer) if tokenizer is not None else None
        if lora is not None:
            freeze_base(llm)
        keep_4bit_weights_trainable_on_cpu(llm)
        if use_activation_checkpointing and not use_fast_path:
            enable_activation_checkpointing(llm)
        # The KV cache is useless in training and costs memory; generation turns it on per call.
        llm.config.use_cache = False
        self.llm = llm
        if lora is not None:
            lora_config = build_lora_config(lora, llm)
            if grown is not None:
                lora_config = train_new_rows(lora_config, llm, *grown)
            if peft_model is not None:
                check_adapter_agrees(read_adapter_config(peft_model), lora_config, peft_model)
            self.llm = attach_lora(llm, lora_config)
            if peft_model is not None:
                loaded = load_adapter_weights(self.llm, peft_model)
                print_log(f'SupervisedFinetune: LoRA starts from the adapter {peft_model} ({loaded} tensors)',
                          logger='current')
        self.use_varlen_attn = use_varlen_attn
        self.fast_path = None
        if use_fast_path:
            # On a GPU the layer inputs kept for recomputation wait in pinned host memory,
            # which is what lets a 256k-token QLoRA step fit (benchmarks/results/gpu_*).
            self.fast_path = apply_fast_path(
                self.llm, gradient_checkpointing=use_activation_checkpointing,
                offload_checkpoints=torch.cuda.is_available(), offload_max_host_gib=32,
                cuda_graphs=cuda_graphs and torch.cuda.is_available() and self.sequence_parallel is None)
            print_log(self.fast_path.summary(), logger='current')
        self.register_load_state_dict_post_hook(_ignore_missing_frozen_weights)
        print_log(f'SupervisedFinetune: {"QLoRA" if quantized else "LoRA" if lora is not None else "full"} '
                  f'fine-tuning, {self.num_trainable_parameters():,} trainable parameters', logger='current')

    @property
    def sequence_parallel_size(self) -> int:
        """Over how many ranks each row is split (1: whole rows)."""
        return 1 if self.sequence_parallel is None else self.sequence_parallel.size

    @property
    def attention_implementation(self) -> str:
        """The attention that runs on whole rows (inside the sequence-parallel wrapper, if any)."""
        if self.sequence_parallel is not None:
            return self.sequence_parallel.attention
        return self.llm.config._attn_implementation

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def init_weights(self):
        """The HF model arrives initialized (or pretrained); mmengine's default would crash on
        4-bit uint8 parameters, and re-initializing would destroy pretrained weights."""

    def trainable_state_keys(self, prefix='') -> set:
        return {prefix + name for name, param in self.named_parameters() if param.requires_grad}

    def state_dict(self, *args, destination=None, prefix='', keep_vars=False):
        """Only the trainable weights, so a 7B LoRA checkpoint is megabytes, not gigabytes."""
        full = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        keep = self.trainable_state_keys(prefix)
        return OrderedDict((key, value) for key, value in full.items() if key in keep)

    def forward(self, data, data_samples=None, mode='loss'):
        if mode == 'loss':
            return self.compute_loss(data)
        inputs = self.forward_kwargs(data)
        inputs.pop('labels', None)
        if mode == 'predict':
            return self.llm(**inputs).logits
        if mode == 'tensor':
            return self.llm(**inputs)
        raise ValueError(f"SupervisedFinetune.forward: mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def forward_kwargs(self, data) -> dict:
        """The HF forward's arguments for a collated batch.

        Packed rows (with ``cumulative_len``) always get attention that stops at sample
        boundaries, whatever ``use_varlen_attn`` says: packing without it would let
        samples attend to each other (XTuner's behaviour), which trains on noise.
        """
        return packed_attention_kwargs(data, self.attention_implementation, dtype=self.llm.dtype)

    def compute_loss(self, data) -> dict:
        """Mean cross-entropy over this micro-batch's trained tokens (labels not IGNORE_INDEX).

        This mean is what the log shows. ``TrainLoop`` then weighs it by the micro-batch's
        share of the trained tokens of the whole optimizer step (all accumulated micro-batches,
        all ranks; ``xft.engine.token_weighting``), so the step's gradient is that of the mean
        over all its tokens. A micro-batch without trained tokens gives a zero loss that still
        reaches every weight (DDP waits for all gradients) instead of 0/0 = NaN. Under sequence
        parallelism it is the whole row's mean, the same on every rank of the group.
        """
        if self.sequence_parallel is not None:
            return {'loss': self.sequence_parallel.loss(self.llm, data, self.llm.dtype,
                                                        chunked=self.fast_path is not None)}
        kwargs = self.forward_kwargs(data)
        if self.fast_path is None:
            outputs = self.llm(**kwargs)
            if count_trained_tokens(kwargs['labels']) == 0:
                return {'loss': outputs.logits.sum() * 0.0}
            return {'loss': outputs.loss}
        # The chunked loss divides by max(tokens, 1): zero, not NaN, without trained tokens.
        loss, _ = causal_lm_loss(self.llm, kwargs.pop('input_ids'), kwargs.pop('labels'), **kwargs)
        return {'loss': loss}

    def gradient_checkpointing_active(self) -> bool:
        return activation_checkpointing_active(self.llm)


def with_rope_scaled_to(llm, max_position_embeddings):
    """The llm config dict with RoPE scaled for ``max_position_embeddings`` (logged), read
    from the model's config before the model is built."""
    if isinstance(llm, nn.Module):
        kwargs, message = linear_rope_scaling(llm.config, max_position_embeddings)
        if kwargs:
            raise ConfigError(f'model.max_position_embeddings={max_position_embeddings}: model.llm is a built '
                              'model; scale its RoPE before building it (or pass its config dict)')
        print_log(message, logger='current')
        return llm
    if not isinstance(llm, dict) or not llm.get('pretrained_model_name_or_path'):
        raise ConfigError('model.max_position_embeddings: needs model.llm with a pretrained_model_name_or_path')
    own = [key for key in ('rope_parameters', 'rope_scaling') if llm.get(key) is not None]
    if own:
        raise ConfigError(f'model.max_position_embeddings={max_position_embeddings} and model.llm.{own[0]} both '
                          'scale RoPE; keep one')
    from transformers import AutoConfig
    path = llm['pretrained_model_name_or_path']
    try:
        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=bool(llm.get('trust_remote_code', False)))
    except (OSError, ValueError) as error:
        raise ConfigError(f'model.llm: cannot read the config of {path!r}: {str(error).splitlines()[0]}') from None
    kwargs, message = linear_rope_scaling(hf_config, max_position_embeddings)
    print_log(message, logger='current')
    return dict(llm, **kwargs) if kwargs else llm


def grow_to_tokenizer(llm, tokenizer):
    """Grow the embeddings to the tokenizer (logged); ``(old rows, new rows)`` or None."""
    n_tokens = tokenizer_length(tokenizer)
    rows = embedding_rows_for(n_tokens, llm.get_input_embeddings().weight.shape[0])
    if rows is None:
        return None
    old = grow_embeddings(llm, rows)
    print_log(f'model.tokenizer has {n_tokens} tokens: embeddings resized from {old} to {rows} rows '
              f'(a multiple of 64); the new rows start at the mean of the old and train', logger='current')
    return old, rows


def enable_activation_checkpointing(llm) -> None:
    """Recompute each decoder layer in backward. transformers 5.24 renamed the method
    (``activation_checkpointing_enable``); 5.17, on the GPU machines, has only the old name.
    Non-reentrant checkpointing needs no input grads, so frozen embeddings are fine."""
    options = {'use_reentrant': False}
    if hasattr(llm, 'activation_checkpointing_enable'):
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def activation_checkpointing_active(llm) -> bool:
    for name in ('is_activation_checkpointing', 'is_gradient_checkpointing'):
        if hasattr(type(llm), name) or hasattr(llm, name):
            return bool(getattr(llm, name))
    return False


def _ignore_missing_frozen_weights(module, incompatible_keys):
    """Checkpoints hold only trainable weights; frozen ones are not 'missing'."""
    trainable = module.trainable_state_keys()
    incompatible_keys.missing_keys[:] = [key for key in incompatible_keys.missing_keys if key in trainable]


__all__ = ['SupervisedFinetune', 'build_llm']
