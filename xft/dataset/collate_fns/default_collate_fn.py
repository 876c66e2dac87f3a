"""The collate step: a list of rows -> the batch ``SupervisedFinetune.forward(data)`` takes.

``default_collate_fn`` returns ``{'data': data, 'data_samples': None}`` (or ``data`` alone with
``return_hf_format=True``). Rows are right-padded. ``data`` holds:

- ``input_ids``      LongTensor (B, L), padded with ``pad_index``
- ``labels``         LongTensor (B, L), padded with IGNORE_INDEX
- ``attention_mask`` LongTensor (B, L), 1 on real tokens, 0 on padding
- ``position_ids``   LongTensor (B, L); for packed rows they restart at 0 at every sample

and, only for packed rows (rows that carry ``cumulative_len``):

- ``cumulative_len`` list of B IntTensors: sample boundaries inside each row, [0, ..., L]
  (a padded tail counts as one more segment)
- ``max_seqlen``     int, the longest segment in the batch

``cumulative_len`` and ``max_seqlen`` are not HF forward arguments: the model passes ``data``
through ``xft.model.packed_attention.packed_attention_kwargs(data, attn_implementation)``, which
pops them and returns what the HF forward takes (a block-diagonal mask, or flash-attention's
varlen arguments), so packed samples never attend to each other.
"""
from typing import Dict, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from xft.utils.constants import DEFAULT_PAD_TOKEN_INDEX, IGNORE_INDEX
from xft.utils.errors import ConfigError


def default_collate_fn(instances: Sequence[Dict], pad_index: int = DEFAULT_PAD_TOKEN_INDEX,
                       return_hf_format: bool = False, use_varlen_attn: bool = False):
    """Batch encoded (or packed) rows. See the module docstring for the keys.

    Example::

        >>> default_collate_fn([{'input_ids': [1, 5, 6], 'labels': [-100, 5, 6]},
        ...                     {'input_ids': [1, 7], 'labels': [-100, 7]}], pad_index=3)['data']
        {'input_ids': tensor([[1, 5, 6], [1, 7, 3]]), 'labels': tensor([[-100, 5, 6], [-100, 7, -100]]),
         'attention_mask': tensor([[1, 1, 1], [1, 1, 0]]), 'position_ids': tensor([[0, 1, 2], [0, 1, 2]])}
    """
    if not instances:
        raise ValueError('default_collate_fn got an empty batch')
    packed = all('cumulative_len' in row for row in instances)
    if use_varlen_attn and not packed:
        raise ConfigError('use_varlen_attn=True needs packed rows (pack_to_max_length=True)')
    input_ids = pad_sequence([torch.as_tensor(row['input_ids'], dtype=torch.long)
                              for row in instances], batch_first=True, padding_value=pad_index)
    labels = pad_sequence([torch.as_tensor(row['labels'], dtype=torch.long)
                           for row in instances], batch_first=True, padding_value=IGNORE_INDEX)
    lengths = torch.tensor([len(row['input_ids']) for row in instances])
    width = input_ids.shape[1]
    attention_mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()
    data = {'input_ids': input_ids, 'labels': labels, 'attention_mask': attention_mask}
    if packed:
        cumulative = [_cover_padding(row['cumulative_len'], width) for row in instances]
        data['position_ids'] = torch.stack([_restarting_positions(c, width) for c in cumulative])
        data['cumulative_len'] = cumulative
        data['max_seqlen'] = int(max((c[1:] - c[:-1]).max() for c in cumulative))
    else:
        data['position_ids'] = torch.arange(width).unsqueeze(0).repeat(len(instances), 1)
    return data if return_hf_format else {'data': data, 'data_samples': None}


def _cover_padding(cumulative_len, width):
    cumulative = torch.as_tensor(cumulative_len, dtype=torch.int32)
    if int(cumulative[-1]) < width:
        cumulative = torch.cat([cumulative, torch.tensor([width], dtype=torch.int32)])
    return cumulative


def _restarting_positions(cumulative, width):
    segment_lengths = (cumulative[1:] - cumulative[:-1]).long()
    starts = torch.repeat_interleave(cumulative[:-1].long(), segment_lengths)
    return torch.arange(width) - starts
