"""default_collate_fn: right padding, label padding, packed-row keys."""
import pytest
import torch

from xft.dataset.collate_fns import default_collate_fn
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError

PAD = 3


def test_unpacked_rows_are_right_padded():
    batch = default_collate_fn([{'input_ids': [1, 5, 6], 'labels': [IGNORE_INDEX, 5, 6]},
                                {'input_ids': [1, 7], 'labels': [IGNORE_INDEX, 7]}],
                               pad_index=PAD)
    assert batch['data_samples'] is None
    data = batch['data']
    assert set(data) == {'input_ids', 'labels', 'attention_mask', 'position_ids'}
    assert data['input_ids'].tolist() == [[1, 5, 6], [1, 7, PAD]]
    assert data['labels'].tolist() == [[IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, IGNORE_INDEX]]
    assert data['attention_mask'].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert data['position_ids'].tolist() == [[0, 1, 2], [0, 1, 2]]


def test_return_hf_format_gives_the_data_dict_alone():
    data = default_collate_fn([{'input_ids': [1, 2], 'labels': [1, 2]}], return_hf_format=True)
    assert set(data) == {'input_ids', 'labels', 'attention_mask', 'position_ids'}


def test_packed_rows_carry_boundaries_and_restarting_positions():
    rows = [{'input_ids': [1, 2, 3, 4, 5], 'labels': [IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5],
             'cumulative_len': [0, 3, 5]},
            {'input_ids': [6, 7, 8], 'labels': [IGNORE_INDEX, 7, 8], 'cumulative_len': [0, 3]}]
    data = default_collate_fn(rows, pad_index=PAD, use_varlen_attn=True)['data']
    assert set(data) == {'input_ids', 'labels', 'attention_mask', 'position_ids',
                         'cumulative_len', 'max_seqlen'}
    assert data['position_ids'].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 1]]
    # The second row's padded tail is a segment of its own.
    assert [c.tolist() for c in data['cumulative_len']] == [[0, 3, 5], [0, 3, 5]]
    assert all(c.dtype == torch.int32 for c in data['cumulative_len'])
    assert data['max_seqlen'] == 3
    assert data['labels'][1].tolist() == [IGNORE_INDEX, 7, 8, IGNORE_INDEX, IGNORE_INDEX]
    assert data['attention_mask'].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]


def test_varlen_without_packed_rows_is_a_config_error():
    with pytest.raises(ConfigError, match='pack_to_max_length'):
        default_collate_fn([{'input_ids': [1], 'labels': [1]}], use_varlen_attn=True)
