"""Sequence parallelism (DeepSpeed-Ulysses) for a transformers causal LM.

``SupervisedFinetune`` asks ``SequenceParallel.prepare(llm)`` once the sequence-parallel groups
exist (``xft.parallel.sequence``); at a size above 1 it checks the model, wraps its attention,
and then computes every training loss through ``SequenceParallel.loss``:

1. the batch (every rank of the group holds the same rows; checked) is padded to a multiple
   of the size: token id 0, ignored labels, positions continuing the row, and, for packed
   rows, the padded tail as one more sample;
2. labels are shifted on the whole row, so the token that starts the next rank's piece is
   still scored (cutting first and shifting each piece would drop it, as XTuner does);
3. attention arguments are made for the *whole* row: packed rows get the block-causal mask
   or the varlen boundaries (``xft.model.packed_attention``); unpacked rows get none, causal
   attention then ignores a right-padded tail by itself (no real token looks forward);
4. token ids, positions and shifted labels are cut into ``size`` pieces; this rank runs the
   model on its piece. Inside every attention layer the registered wrapper (below) swaps
   tokens for heads (all-to-all), runs the model's own attention (``sdpa``, or ``xft_varlen``
   for packed rows on CUDA) on all tokens of its heads, and swaps back;
5. the loss is the token-weighted mean over the whole row (``reduce_sequence_parallel_loss``),
   with gradients that DDP's or ZeRO's average across the ranks turns into the row's.

The wrapper is an attention implementation registered with transformers' attention
interface (``xft_sp_sdpa``, ``xft_sp_xft_varlen``). It splits only when the forward carries
``sequence_parallel_group`` (step 4); any other forward (generation in a chat hook, the
'predict' mode) runs the inner attention on whole rows, as before. CUDA graphs stay off under
sequence parallelism (the collectives would have to be captured with the layers).
"""
import dataclasses
import math
from typing import Optional

import torch
from torch.nn import functional as F

from xft.parallel.sequence import (all_to_all, get_sequence_parallel_group, get_sequence_parallel_world_size,
                                   pad_cumulative_len_for_sequence_parallel, pad_for_sequence_parallel,
                                   padded_length, reduce_sequence_parallel_loss, split_for_sequence_parallel)
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError, DataError

from .fast_path import _plain_head, hf_model
from .loss import linear_cross_entropy, shift_labels
from .packed_attention import VARLEN_ATTENTION_NAME, packed_attention_kwargs

# Families whose attention modules project q/k/v, apply RoPE per token and call transformers'
# attention interface with (batch, heads, tokens, head_dim) tensors: what the wrapper needs.
SUPPORTED_MODEL_TYPES = ('llama', 'mistral', 'qwen2', 'qwen3')
# Attention implementations that read a missing mask as causal and a 4D mask or varlen
# boundaries as given: the inner attention the wrapper can run on whole rows.
SUPPORTED_ATTENTION = ('sdpa', VARLEN_ATTENTION_NAME)
ATTENTION_PREFIX = 'xft_sp_'
GROUP_KWARG = 'sequence_parallel_group'


def check_sequence_parallel_model(llm, size: int) -> None:
    """Refuse, in one line, a model the wrapper cannot split over ``size`` ranks."""
    config = hf_model(llm).config
    where = f'sequence_parallel_size={size}'
    model_type = getattr(config, 'model_type', None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f'{where}: model type {model_type!r} is not supported; sequence parallelism splits '
                          f'Llama-style attention ({", ".join(SUPPORTED_MODEL_TYPES)})')
    if _sliding_window(config) is not None:
        raise ConfigError(f'{where}: the model attends through a sliding window of {_sliding_window(config)} '
                          'tokens, which sequence parallelism does not reproduce; load it with sliding_window=None')
    heads = config.num_attention_heads
    kv_heads = getattr(config, 'num_key_value_heads', None) or heads
    if heads % size or kv_heads % size:
        raise ConfigError(f'{where}: the model has {heads} attention heads and {kv_heads} key/value heads; '
                          f'both must divide by the sequence-parallel size (each rank attends with 1/{size} '
                          f'of them); choose a size that divides {math.gcd(heads, kv_heads)}')
    attention = config._attn_implementation
    if attention not in SUPPORTED_ATTENTION:
        raise ConfigError(f'{where}: attn_implementation={attention!r} is not supported under sequence '
                          "parallelism; use 'sdpa' (the default; packed rows on CUDA then run xft's varlen kernel)")


def _sliding_window(config):
    window = getattr(config, 'sliding_window', None)
    if window is None or getattr(config, 'use_sliding_window', True) is False:
        return None
    return window


def _ulysses_attention(inner: str):
    """The attention function registered as ``ATTENTION_PREFIX + inner``."""

    def attention(module, query, key, value, attention_mask, sequence_parallel_group=None, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        attend = ALL_ATTENTION_FUNCTIONS[inner]
        if sequence_parallel_group is None:
            return attend(module, query, key, value, attention_mask, **kwargs)
        # Positions of this rank's piece only; after the swap the mask or the varlen
        # boundaries describe the whole row (flash-style kernels would read the positions).
        kwargs.pop('position_ids', None)
        # (batch, heads, tokens / sp, d) -> (batch, heads / sp, tokens, d), one after the other so
        # that each input can be freed before the next exchange.
        query = all_to_all(query, sequence_parallel_group, scatter_dim=1, gather_dim=2)
        key = all_to_all(key, sequence_parallel_group, scatter_dim=1, gather_dim=2)
        value = all_to_all(value, sequence_parallel_group, scatter_dim=1, gather_dim=2)
        out, _ = attend(module, query, key, value, attention_mask, **kwargs)
        # (batch, tokens, heads / sp, d) -> (batch, tokens / sp, heads, d)
        return all_to_all(out, sequence_parallel_group, scatter_dim=1, gather_dim=2), None

    return attention


def _inner_mask(inner: str):
    """Masks as the inner attention builds them; none when the forward passes none (the
    split forward passes a 4D mask, which transformers keeps as it is, or none at all)."""

    def mask(**kwargs):
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
        if kwargs.get('attention_mask') is None:
            return None
        return ALL_MASK_ATTENTION_FUNCTIONS[inner](**kwargs)

    return mask


def register_sequence_parallel_attention(inner: str) -> str:
    """Register the wrapper around ``inner``; returns its ``attn_implementation`` name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    name = ATTENTION_PREFIX + inner
    AttentionInterface.register(name, _ulysses_attention(inner))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, _inner_mask(inner))
    return name


@dataclasses.dataclass
class SequenceParallel:
    """A model's sequence-parallel state: the group and the attention run inside the wrapper."""
    size: int
    group: object
    attention: str

    @classmethod
    def prepare(cls, llm) -> Optional['SequenceParallel']:
        """None at sequence-parallel size 1; otherwise check ``llm`` (a transformers model,
        before LoRA is attached) and switch its attention to the wrapper."""
        size = get_sequence_parallel_world_size()
        if size == 1:
            return None
        check_sequence_parallel_model(llm, size)
        inner = llm.config._attn_implementation
        llm.set_attn_implementation(register_sequence_parallel_attention(inner))
        return cls(size, get_sequence_parallel_group(), inner)

    def summary(self) -> str:
        return (f'sequence parallel over {self.size} ranks: each holds 1/{self.size} of every row; attention '
                f'all-to-alls over heads around {self.attention}; CUDA graphs off')

    def split_batch(self, data: dict, dtype: torch.dtype):
        """(forward kwargs for this rank's piece of ``data``'s rows, the piece's shifted labels)."""
        input_ids, labels = data['input_ids'], data['labels']
        self._check_same_rows(input_ids, labels)
        batch, length = input_ids.shape
        width = padded_length(length, self.size)
        positions = data.get('position_ids')
        if positions is None:
            positions = torch.arange(length, device=input_ids.device).expand(batch, -1)
        _check_right_padded(data.get('attention_mask'))
        ids = pad_for_sequence_parallel(input_ids, 0, dim=1, sp=self.size)
        targets = shift_labels(pad_for_sequence_parallel(labels, IGNORE_INDEX, dim=1, sp=self.size))
        if width > length:
            tail = positions[:, -1:] + torch.arange(1, width - length + 1, device=positions.device)
            positions = torch.cat([positions, tail], dim=1)
        kwargs = {'attention_mask': None}
        cumulative = data.get('cumulative_len')
        if cumulative is not None:
            whole_row = {'input_ids': ids, 'cumulative_len': pad_cumulative_len_for_sequence_parallel(cumulative, width)}
            kwargs.update(packed_attention_kwargs(whole_row, self.attention, dtype=dtype))
        kwargs.update(input_ids=self._piece(ids), position_ids=self._piece(positions))
        kwargs[GROUP_KWARG] = self.group
        return kwargs, self._piece(targets)

    def _piece(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's piece of (batch, tokens) ``tensor``."""
        return split_for_sequence_parallel(tensor, 1, self.group)

    def loss(self, llm, data: dict, dtype: torch.dtype, chunked: bool) -> torch.Tensor:
        """The whole row's mean loss (see the module docstring); ``chunked``: the fast path's
        loss from hidden states (when the head is a plain linear layer)."""
        kwargs, targets = self.split_batch(data, dtype)
        model = hf_model(llm)
        head = _plain_head(model) if chunked else None
        if head is not None:
            hidden = model.get_decoder()(use_cache=False, **kwargs).last_hidden_state
            mean, n_tokens = linear_cross_entropy(hidden, head.weight, targets, shifted=True)
        else:
            logits = llm(use_cache=False, **kwargs).logits
            n_tokens = int((targets != IGNORE_INDEX).sum())
            total = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                    reduction='sum')
            mean = total / max(n_tokens, 1)
        return reduce_sequence_parallel_loss(mean, n_tokens, self.group)

    def _check_same_rows(self, input_ids, labels) -> None:
        """Every rank of the group must hold the same rows: compare a fingerprint (shape and
        position-weighted sums of ids and labels; integer arithmetic, equal on equal rows)."""
        import torch.distributed as dist
        weights = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)
        mine = torch.stack([torch.tensor(input_ids.shape[0], device=input_ids.device),
                            torch.tensor(input_ids.shape[1], device=input_ids.device),
                            (input_ids.long() * weights).sum(), (labels.long() * weights).sum()])
        everyone = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(everyone, mine, group=self.group)
        if any(not torch.equal(other, everyone[0]) for other in everyone[1:]):
            raise DataError(f'sequence parallelism: the {self.size} ranks of a group got different rows; '
                            'train_dataloader.sampler must give them the same rows (SequenceParallelSampler)')


def _check_right_padded(attention_mask) -> None:
    """Unpacked rows are split without a mask: that is exact only when padding is at the end."""
    if attention_mask is None or attention_mask.dim() != 2:
        return
    mask = attention_mask.bool()
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise DataError('sequence parallelism: rows must be padded on the right (default_collate_fn pads '
                        'them so); this batch has padding before real tokens')


__all__ = ['SequenceParallel', 'check_sequence_parallel_model', 'register_sequence_parallel_attention',
           'SUPPORTED_MODEL_TYPES', 'SUPPORTED_ATTENTION']
