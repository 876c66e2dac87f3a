"""``mmlu_collate_fn``: ``default_collate_fn``'s batch plus each row's answer and subject.

For ``MMLUMetric``: rows are qlora's five-shot MMLU rows encoded with
``input_ids_with_output=False`` (the prompt alone) and keeping their ``output`` (A-D) and
``subject`` columns (``remove_unused_columns=False``, the default).
"""
from typing import Dict, Sequence

from xft.utils.constants import DEFAULT_PAD_TOKEN_INDEX
from xft.utils.errors import DataError

from .default_collate_fn import default_collate_fn

CHOICES = ('A', 'B', 'C', 'D')


def mmlu_collate_fn(instances: Sequence[Dict], pad_index: int = DEFAULT_PAD_TOKEN_INDEX,
                    return_hf_format: bool = False):
    """``{'data': <default_collate_fn's data>, 'data_samples': {'labels': [...], 'subjects': [...]}}``"""
    data = default_collate_fn(instances, pad_index=pad_index, return_hf_format=True)
    if return_hf_format:
        return data
    for row in instances:
        if 'output' not in row or 'subject' not in row:
            raise DataError('mmlu_collate_fn: each row needs output (A-D) and subject columns, got '
                            f'{sorted(row)}; keep remove_unused_columns=False in the MMLU dataset')
        if row['output'] not in CHOICES:
            raise DataError(f"mmlu_collate_fn: output must be one of A, B, C, D, got {row['output']!r} "
                            f"(subject {row['subject']!r})")
    samples = {'labels': [row['output'] for row in instances], 'subjects': [row['subject'] for row in instances]}
    return {'data': data, 'data_samples': samples}
