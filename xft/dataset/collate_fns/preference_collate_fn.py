"""``preference_collate_fn``: rows of preference pairs -> the batch DPO, ORPO and RewardModel take.

A row holds whole pairs, each a chosen then a rejected sequence, with their boundaries in
``cumulative_len`` (``xft.dataset.preference_pairs``; several pairs when packed). The batch is
``default_collate_fn``'s (``input_ids``, ``labels``, ``attention_mask``, ``position_ids``),
plus ``sequence_index`` (B, L): the sequence each token belongs to, numbered chosen 0,
rejected 0, chosen 1, rejected 1, ... over the whole batch, and -1 on padding. The models
read their pairs from it (``xft.model.sequence_logprobs``).

Two layouts, XTuner's ``use_varlen_attn`` switch choosing:

- ``use_varlen_attn=False``: every sequence becomes its own padded row (the pair's two answers
  side by side, as XTuner's collate does), so attention needs no mask beyond padding.
- ``use_varlen_attn=True``: rows stay as they are (packed pairs), with ``cumulative_len`` and
  ``max_seqlen``, so ``xft.model.packed_attention`` keeps every sequence to itself, and each
  sequence's positions restart at 0. Any batch size works (XTuner's needs 1).
"""
from typing import Dict, Sequence

import torch

from xft.utils.constants import DEFAULT_PAD_TOKEN_INDEX, IGNORE_INDEX
from xft.utils.errors import ConfigError

from .default_collate_fn import default_collate_fn

SEQUENCE_INDEX = 'sequence_index'
PADDING_SEQUENCE = -1


def _sequences(row):
    """[(ids, labels)] of each sequence of one row, and a check of its boundaries."""
    bounds = [int(b) for b in row.get('cumulative_len') or []]
    ids, labels = list(row['input_ids']), list(row['labels'])
    if len(bounds) < 3 or (len(bounds) - 1) % 2 or bounds[0] != 0 or bounds[-1] != len(ids):
        raise ConfigError('preference_collate_fn needs rows of whole preference pairs (from '
                          f'build_preference_dataset); got cumulative_len={bounds or None}')
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if labels[start] != IGNORE_INDEX:
            raise ValueError('preference row: the first token of a sequence carries a label, so '
                             'the sequence before it would predict across the boundary')
        pieces.append((ids[start:end], labels[start:end]))
    return pieces


def preference_collate_fn(instances: Sequence[Dict], pad_index: int = DEFAULT_PAD_TOKEN_INDEX,
                          return_hf_format: bool = False, use_varlen_attn: bool = False):
    """Batch preference rows (see the module docstring). Arguments as XTuner's.

    >>> rows = [{'input_ids': [1, 5, 6, 1, 7], 'labels': [-100, 5, 6, -100, 7],
    ...          'cumulative_len': [0, 3, 5]}]
    >>> data = preference_collate_fn(rows, pad_index=0)['data']
    >>> data['input_ids'].tolist(), data['sequence_index'].tolist()
    ([[1, 5, 6], [1, 7, 0]], [[0, 0, 0], [1, 1, -1]])
    """
    if not instances:
        raise ValueError('preference_collate_fn got an empty batch')
    rows = [_sequences(row) for row in instances]
    if use_varlen_attn:
        data = default_collate_fn(instances, pad_index=pad_index, return_hf_format=True)
        index = torch.full(data['input_ids'].shape, PADDING_SEQUENCE, dtype=torch.long)
        number = 0
        for row, pieces in enumerate(rows):
            start = 0
            for ids, _ in pieces:
                index[row, start:start + len(ids)] = number
                start += len(ids)
                number += 1
    else:
        split = [{'input_ids': ids, 'labels': labels} for pieces in rows for ids, labels in pieces]
        data = default_collate_fn(split, pad_index=pad_index, return_hf_format=True)
        numbers = torch.arange(len(split)).unsqueeze(1).expand_as(data['input_ids'])
        index = torch.where(data['attention_mask'].bool(), numbers, PADDING_SEQUENCE)
    data[SEQUENCE_INDEX] = index
    return data if return_hf_format else {'data': data, 'data_samples': None}


def count_pairs(data_batch) -> int:
    """Preference pairs in a collated batch (``{'data': ...}`` or the data itself): the unit
    a preference loss averages over, as tokens are for SFT."""
    data = data_batch.get('data', data_batch) if isinstance(data_batch, dict) else None
    index = data.get(SEQUENCE_INDEX) if isinstance(data, dict) else None
    if not isinstance(index, torch.Tensor):
        raise ConfigError('a preference model needs batches from preference_collate_fn '
                          f'(no {SEQUENCE_INDEX!r} in the batch)')
    return (int(index.max()) + 1) // 2 if index.numel() else 0
