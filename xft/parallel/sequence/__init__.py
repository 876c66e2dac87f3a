"""Sequence parallelism (DeepSpeed-Ulysses), with the names of XTuner 0.1.23's
``xtuner.parallel.sequence``.

A config sets ``sequence_parallel_size = N`` (PART 1) and ``xft train`` runs it on a multiple
of ``N`` processes: each group of ``N`` ranks trains the same rows, every rank holding ``1/N``
of each row's tokens (rows are padded to a multiple of ``N`` with ignored labels; position ids
stay those of the whole row). Attention swaps tokens for heads with one all-to-all before and
one after (``attention``); the loss is the token-weighted mean over the whole row (``loss``).
The model side lives in ``xft.model.sequence_parallel``; docs/distributed_and_faults.md says
when to use it.

XTuner's configs pick their sampler with
``SequenceParallelSampler if sequence_parallel_size > 1 else DefaultSampler``, so every config
imports this module, whatever its size.
"""
from .attention import (post_process_for_sequence_parallel_attn, pre_process_for_sequence_parallel_attn,
                        sequence_parallel_wrapper)
from .comm import (all_to_all, gather_for_sequence_parallel, gather_forward_split_backward,
                   split_for_sequence_parallel, split_forward_gather_backward)
from .data import pad_cumulative_len_for_sequence_parallel, pad_for_sequence_parallel, padded_length
from .groups import (destroy_sequence_parallel, get_data_parallel_group, get_data_parallel_rank,
                     get_data_parallel_world_size, get_sequence_parallel_group, get_sequence_parallel_rank,
                     get_sequence_parallel_world_size, init_sequence_parallel, is_sequence_parallel_initialized)
from .loss import reduce_sequence_parallel_loss
from .sampler import SequenceParallelSampler
from .setup import check_sequence_parallel_size, sequence_parallel_size_of, setup_sequence_parallel

__all__ = [
    'SequenceParallelSampler', 'init_sequence_parallel', 'destroy_sequence_parallel',
    'is_sequence_parallel_initialized', 'get_sequence_parallel_group', 'get_sequence_parallel_world_size',
    'get_sequence_parallel_rank', 'get_data_parallel_group', 'get_data_parallel_world_size',
    'get_data_parallel_rank', 'all_to_all', 'split_for_sequence_parallel', 'gather_for_sequence_parallel',
    'split_forward_gather_backward', 'gather_forward_split_backward', 'pad_for_sequence_parallel',
    'pad_cumulative_len_for_sequence_parallel', 'padded_length', 'reduce_sequence_parallel_loss',
    'pre_process_for_sequence_parallel_attn', 'post_process_for_sequence_parallel_attn',
    'sequence_parallel_wrapper', 'check_sequence_parallel_size', 'sequence_parallel_size_of',
    'setup_sequence_parallel',
]
