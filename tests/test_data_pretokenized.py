"""Rows that already hold token ids: ``process_hf_dataset(do_dataset_tokenization=False)``.

XTuner's pg_books configs train on a hub dataset of pre-tokenized 64k chunks this way, with
neither a tokenizer nor a max_length. Rows without ``labels`` train on every token; given
labels pair with the ids one to one; ids outside the tokenizer's vocabulary, a missing
``input_ids`` column and map functions (which map raw text) are refused in one line.
"""
import json

import pytest
from helpers.training import logged_losses, train_in_process, write_tiny_config

from xft.dataset import process_hf_dataset
from xft.dataset.map_fns import alpaca_map_fn
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError, DataError

ROWS = [
    {'input_ids': [1, 40, 41, 42, 43, 44, 2]},                                      # every token trains
    {'input_ids': [1, 50, 51, 52, 2], 'labels': [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 52, 2]},
    {'input_ids': [1, 60, 61], 'labels': [IGNORE_INDEX] * 3},                       # nothing to train
    {'input_ids': list(range(100, 120))},                                           # longer than 12
]


def write_jsonl(path, rows):
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    return path


def test_ids_are_kept_labels_default_to_the_ids_and_long_rows_are_cut(tmp_path, tiny_tokenizer):
    data = process_hf_dataset(write_jsonl(tmp_path / 'ids.jsonl', ROWS), tokenizer=tiny_tokenizer,
                              max_length=12, do_dataset_tokenization=False, pack_to_max_length=False)
    assert data['input_ids'] == [ROWS[0]['input_ids'], ROWS[1]['input_ids'], list(range(100, 112))]
    assert data['labels'] == [ROWS[0]['input_ids'], ROWS[1]['labels'], list(range(100, 112))]
    assert data.length == [7, 5, 12]


def test_without_tokenizer_or_max_length_rows_stay_whole_as_in_xtuners_pgbooks_configs(tmp_path):
    data = process_hf_dataset(write_jsonl(tmp_path / 'ids.jsonl', ROWS), do_dataset_tokenization=False,
                              remove_unused_columns=True, pack_to_max_length=False)
    assert data['input_ids'][-1] == list(range(100, 120))
    assert sorted(data.column_names) == ['input_ids', 'labels', 'length']


def test_packed_pretokenized_rows_keep_every_token_and_their_boundaries(tmp_path, tiny_tokenizer):
    rows = [{'input_ids': [1] + [10 + i] * (3 + i) + [2]} for i in range(8)]
    data = process_hf_dataset(write_jsonl(tmp_path / 'ids.jsonl', rows), tokenizer=tiny_tokenizer,
                              max_length=16, do_dataset_tokenization=False, pack_to_max_length=True,
                              shuffle_before_pack=False)
    packed = [token for row in data['input_ids'] for token in row]
    assert packed == [token for row in rows for token in row['input_ids']]
    for row in data:
        bounds = row['cumulative_len']
        pieces = [row['input_ids'][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        # a piece is (part of) one sample: no BOS after its start, no EOS before its end
        assert all(1 not in piece[1:] and 2 not in piece[:-1] for piece in pieces), pieces


def test_an_id_outside_the_vocabulary_names_the_line(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / 'ids.jsonl', [ROWS[0], {'input_ids': [1, 40, 512]}])
    with pytest.raises(DataError, match=r"ids.jsonl line 2: token id 512 at position 2 is outside the "
                                        r"tokenizer's vocabulary \(0-511\)"):
        process_hf_dataset(path, tokenizer=tiny_tokenizer, max_length=12, do_dataset_tokenization=False,
                           pack_to_max_length=False)


@pytest.mark.parametrize('row, message', [
    ({'input_ids': [1, 2, 3], 'labels': [1, 2]}, 'labels must pair with input_ids one to one: 3 input_ids'),
    ({'input_ids': []}, 'input_ids must be a non-empty list of token ids'),
    ({'input_ids': [1, -3]}, r'input_ids must be a non-empty list of token ids, got \[1, -3\]'),
])
def test_malformed_rows_are_named(tmp_path, row, message):
    path = tmp_path / 'ids.json'
    path.write_text(json.dumps([row]))
    with pytest.raises(DataError, match=f'ids.json row 1: {message}'):
        process_hf_dataset(path, do_dataset_tokenization=False, pack_to_max_length=False)


def test_raw_text_rows_are_refused_with_the_columns_they_have(tmp_path, shared_data):
    with pytest.raises(DataError, match=r"alpaca_data_subset.json row 1: do_dataset_tokenization=False "
                                        r"needs rows holding 'input_ids'.*'instruction'"):
        process_hf_dataset(shared_data / 'alpaca' / 'alpaca_data_subset.json', do_dataset_tokenization=False,
                           pack_to_max_length=False)


@pytest.mark.parametrize('kwargs, message', [
    (dict(dataset_map_fn=alpaca_map_fn), 'leave dataset_map_fn and template_map_fn out'),
    (dict(pack_to_max_length=True), 'pack_to_max_length=True needs max_length'),
])
def test_options_that_cannot_apply_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        process_hf_dataset(write_jsonl(tmp_path / 'ids.jsonl', ROWS), do_dataset_tokenization=False, **kwargs)


def test_text_rows_still_need_a_tokenizer_and_max_length(tmp_path):
    with pytest.raises(ConfigError, match='process_hf_dataset needs tokenizer and max_length'):
        process_hf_dataset(write_jsonl(tmp_path / 'ids.jsonl', ROWS))


def test_a_config_trains_on_pretokenized_rows(tmp_path, tiny_llama_dir, tiny_tokenizer):
    rows = [{'input_ids': tiny_tokenizer(f'Line {i}: to be, or not to be, that is the question.')['input_ids']}
            for i in range(8)]
    data = write_jsonl(tmp_path / 'ids.jsonl', rows)
    config = write_tiny_config(tmp_path, tiny_llama_dir, data)
    text = config.read_text()
    for old, new in {'        dataset_map_fn=alpaca_map_fn,\n': '        do_dataset_tokenization=False,\n',
                     '        template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),\n': '',
                     'max_iters = 20': 'max_iters = 2'}.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    config.write_text(text)
    train_in_process(config, '--work-dir', tmp_path / 'work')
    losses = logged_losses(tmp_path / 'work')
    assert sorted(losses) == [1, 2] and all(0 < loss < 20 for loss in losses.values())
