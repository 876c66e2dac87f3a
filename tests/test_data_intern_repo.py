"""XTuner's InternLM-repo data (``xft.dataset.intern_repo``): tokenized ``.bin`` folders, OpenAI
message ``.json`` folders, each file packed on its own, and a config of XTuner's shape training on
them with ``InternRepoSampler``."""
import json

import pytest
from helpers.training import logged_losses, train_in_process, write_tiny_config

from xft.dataset import process_hf_dataset
from xft.dataset.intern_repo import (build_packed_dataset, load_intern_repo_tokenized_dataset,
                                     load_intern_repo_untokenized_dataset)
from xft.dataset.map_fns import openai_map_fn, template_map_fn_factory
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError, DataError
from xft.utils.templates import PROMPT_TEMPLATE


def write_lines(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join((row if isinstance(row, str) else json.dumps(row)) + '\n' for row in rows))
    return path


@pytest.fixture
def tokenized_folder(tmp_path):
    folder = tmp_path / 'tokenized'
    # b/ sorts after a/, and 0.bin before 1.bin: the walk order is the sorted path order
    write_lines(folder / 'a' / '1.bin', [{'tokens': [1, -30, -31, 32, 33, 2]}, {'tokens': [1, 40]}])
    write_lines(folder / 'a' / '0.bin', [{'tokens': [1, -50, 51, 52, 2]}, '', {'tokens': [1, 60, 61, 62, 63, 64, 2]}])
    write_lines(folder / 'b' / '0.bin', [{'tokens': [1, 70, 71, 2]}])
    (folder / 'a' / '0.bin.meta').write_bytes(b'InternLM offsets, not read')
    (folder / 'notes.txt').write_text('not data')
    return folder


def test_tokenized_files_load_in_path_order_with_negative_ids_untrained(tokenized_folder):
    loaded = load_intern_repo_tokenized_dataset(str(tokenized_folder))
    assert [data['input_ids'] for data in loaded] == [
        [[1, 50, 51, 52, 2], [1, 60, 61, 62, 63, 64, 2]],
        [[1, 30, 31, 32, 33, 2], [1, 40]],
        [[1, 70, 71, 2]]]
    assert loaded[1]['labels'][0] == [1, IGNORE_INDEX, IGNORE_INDEX, 32, 33, 2]
    assert loaded[0]['length'] == [5, 7]


def test_min_length_and_the_order_file(tokenized_folder, tmp_path):
    order = tmp_path / 'order.txt'
    order.write_text('b/0.bin\na/1.bin\n')
    loaded = load_intern_repo_tokenized_dataset(tokenized_folder, min_length=4, data_order_path=str(order))
    assert [data['input_ids'] for data in loaded] == [[[1, 70, 71, 2]], [[1, 30, 31, 32, 33, 2]]]
    order.write_text('b/0.bin\na/9.bin\n')
    with pytest.raises(ConfigError, match=r'order.txt line 2: .*a/9.bin does not exist'):
        load_intern_repo_tokenized_dataset(tokenized_folder, data_order_path=str(order))


@pytest.mark.parametrize('line, message', [
    ('{"tokens": [1, 2', 'line 2: not a JSON object'),
    ('{"text": "raw"}', r'line 2: expected \{"tokens": \[token ids, negative where untrained\]\}'),
    ('{"tokens": []}', 'line 2: expected'),
])
def test_a_bad_line_is_named(tmp_path, line, message):
    write_lines(tmp_path / 'data' / '0.bin', [{'tokens': [1, 2]}, line])
    with pytest.raises(DataError, match=message):
        load_intern_repo_tokenized_dataset(tmp_path / 'data')


def test_an_empty_or_missing_folder_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match='no such data folder'):
        load_intern_repo_tokenized_dataset(tmp_path / 'nowhere')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ConfigError, match=r'no \.bin files in it'):
        load_intern_repo_tokenized_dataset(tmp_path / 'empty')


def test_each_file_is_shuffled_with_the_seed_and_packed_on_its_own(tokenized_folder):
    cfg = dict(type=load_intern_repo_tokenized_dataset, folder=str(tokenized_folder))
    packed = build_packed_dataset(cfg, packed_length=4, seed=1024)
    files = load_intern_repo_tokenized_dataset(tokenized_folder)
    # 12, 8 and 4 tokens: 3 + 2 + 1 rows, no row spanning two files, every token kept
    assert packed.length == [4] * 6 and len(packed) == 6
    rows = packed['input_ids']
    for file_rows, data in zip((rows[:3], rows[3:5], rows[5:]), files):
        assert sorted(t for row in file_rows for t in row) == sorted(t for ids in data['input_ids'] for t in ids)
    # each piece of a row is part of one sample: a BOS only at a piece start
    for row in packed:
        bounds = row['cumulative_len']
        assert all(1 not in row['input_ids'][a + 1:b] for a, b in zip(bounds[:-1], bounds[1:]))
    assert build_packed_dataset(cfg, packed_length=4, seed=1024)['input_ids'] == rows
    orders = {tuple(map(tuple, build_packed_dataset(cfg, packed_length=4, seed=seed)['input_ids'][:3]))
              for seed in range(6)}
    assert len(orders) > 1  # the seed picks the order within a file


def test_untokenized_message_files_encode_as_openai_rows_do(tmp_path, tiny_tokenizer):
    conversations = [[{'role': 'user', 'content': f'question {i}'}, {'role': 'assistant', 'content': f'answer {i}'}]
                     for i in range(4)]
    write_lines(tmp_path / 'messages' / '0.json', conversations[:3])
    write_lines(tmp_path / 'messages' / '1.json', conversations[3:])
    template = dict(type=template_map_fn_factory, template=PROMPT_TEMPLATE.chatml)
    loaded = load_intern_repo_untokenized_dataset(folder=tmp_path / 'messages', tokenizer=tiny_tokenizer,
                                                  max_length=64, template_map_fn=template)
    rows = tmp_path / 'openai.json'
    rows.write_text(json.dumps([{'messages': m} for m in conversations]))
    expected = process_hf_dataset(rows, tokenizer=tiny_tokenizer, max_length=64, dataset_map_fn=openai_map_fn,
                                  template_map_fn=template, pack_to_max_length=False)
    assert [len(data) for data in loaded] == [3, 1]
    assert [ids for data in loaded for ids in data['input_ids']] == expected['input_ids']
    assert [labels for data in loaded for labels in data['labels']] == expected['labels']


def test_an_untokenized_line_that_is_not_a_message_list_is_named(tmp_path, tiny_tokenizer):
    write_lines(tmp_path / 'messages' / '0.json', [[{'role': 'user', 'content': 'hi'}], {'role': 'user'}])
    with pytest.raises(DataError, match=r'0.json line 2: expected a list of messages'):
        load_intern_repo_untokenized_dataset(folder=tmp_path / 'messages', tokenizer=tiny_tokenizer, max_length=64)
    with pytest.raises(ConfigError, match=r'missing: tokenizer, max_length'):
        load_intern_repo_untokenized_dataset(folder=tmp_path / 'messages')


XTUNER_SHAPED_LOADER = '''
from xft.dataset.intern_repo import build_packed_dataset, load_intern_repo_tokenized_dataset
from xft.dataset.samplers import InternRepoSampler

train_dataloader = dict(
    batch_size=1,
    num_workers=0,
    dataset=dict(type=build_packed_dataset,
                 dataset_cfg=dict(type=load_intern_repo_tokenized_dataset, data_order_path=None,
                                  folder='@FOLDER@', min_length=0, file_type='.bin'),
                 packed_length=64, seed=1024),
    sampler=dict(type=InternRepoSampler, shuffle=True, seed=1024),
    collate_fn=dict(type=default_collate_fn, use_varlen_attn=True))
'''


@pytest.fixture
def repo_config(tmp_path, tiny_llama_dir, tiny_tokenizer, shared_data):
    """The tiny config with XTuner's repo loader over a folder of 12 tokenized lines."""
    rows = []
    for i in range(12):
        ids = tiny_tokenizer(f'Line {i}: to be, or not to be, that is the question.')['input_ids']
        rows.append({'tokens': [ids[0]] + [-t for t in ids[1:4]] + ids[4:]})  # a prompt of 3 untrained
    write_lines(tmp_path / 'tokenized' / '0.bin', rows)
    config = write_tiny_config(tmp_path, tiny_llama_dir, shared_data / 'alpaca' / 'alpaca_data_subset.json')
    config.write_text(config.read_text().replace('max_iters = 20', 'max_iters = 2')
                      + XTUNER_SHAPED_LOADER.replace('@FOLDER@', str(tmp_path / 'tokenized')))
    return config


def test_a_config_of_xtuners_shape_trains_on_a_tokenized_folder(tmp_path, repo_config):
    run = train_in_process(repo_config, '--work-dir', tmp_path / 'work')
    assert '0.bin: 12 samples' in run.log  # the folder was read, not the tiny config's alpaca entry
    losses = logged_losses(tmp_path / 'work')
    assert sorted(losses) == [1, 2] and all(0 < loss < 20 for loss in losses.values())


def test_check_custom_dataset_and_log_dataset_read_a_repo_config(repo_config, capsys):
    from xft.tools.dataset_tools import check_custom_dataset_main, log_dataset_main

    assert check_custom_dataset_main([str(repo_config)]) == 0
    out = capsys.readouterr().out
    rows = build_packed_dataset(dict(type=load_intern_repo_tokenized_dataset,
                                     folder=str(repo_config.parent / 'tokenized')), packed_length=64)
    trained = sum(label != IGNORE_INDEX for labels in rows['labels'] for label in labels)
    assert len(rows) > 1 and f'--- after reading and packing: {len(rows)} rows ---' in out
    assert f'counts: {len(rows)} packed rows ({sum(rows.length)} tokens, {trained} trained)' in out
    assert 'no problems found' in out
    assert log_dataset_main([str(repo_config), '--show', 'input_ids']) == 0
    assert f'[input_ids]\n{rows[0]["input_ids"]}' in capsys.readouterr().out
