"""process_hf_dataset end to end: steps, counts in the log, packing, save and reload."""
import json
import re

import numpy as np
import pytest

from xft.dataset import process_hf_dataset
from xft.dataset.map_fns import alpaca_map_fn, oasst1_map_fn, template_map_fn_factory
from xft.dataset.packing import pack_arrays
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError, DataError
from xft.utils.templates import PROMPT_TEMPLATE

MEDQA = 'internlm_tutorial_medqa2019/MedQA2019-structured-train.jsonl'


@pytest.fixture
def toy_rows(tmp_path):
    rows = [{'conversation': [{'input': f'question {i}', 'output': 'answer ' * (i + 1)}]}
            for i in range(12)]
    path = tmp_path / 'toy.json'
    path.write_text(json.dumps(rows))
    return path


def chatml():
    return dict(type=template_map_fn_factory, template=PROMPT_TEMPLATE.chatml)


def test_unpacked_rows_keep_every_sample(toy_rows, tiny_tokenizer):
    data = process_hf_dataset(toy_rows, tiny_tokenizer, 256, template_map_fn=chatml(),
                              pack_to_max_length=False)
    assert len(data) == 12
    assert data.length == [len(ids) for ids in data['input_ids']]
    first = data[0]
    assert first['input_ids'][0] == tiny_tokenizer.bos_token_id
    assert tiny_tokenizer.decode([t for t, l in zip(first['input_ids'], first['labels'])
                                  if l != IGNORE_INDEX]) == 'answer <|im_end|>'


def test_packed_rows_are_max_length_and_lose_no_token(toy_rows, tiny_tokenizer):
    unpacked = process_hf_dataset(toy_rows, tiny_tokenizer, 64, template_map_fn=chatml(),
                                  pack_to_max_length=False)
    packed = process_hf_dataset(toy_rows, tiny_tokenizer, 64, template_map_fn=chatml(),
                                pack_to_max_length=True, shuffle_before_pack=False)
    total = sum(unpacked['length'])
    assert sum(packed['length']) == total
    assert all(n == 64 for n in packed['length'][:-1]) and 0 < packed['length'][-1] <= 64
    stream = [t for row in packed['input_ids'] for t in row]
    assert stream == [t for row in unpacked['input_ids'] for t in row]
    for row in packed:
        assert row['cumulative_len'][0] == 0 and row['cumulative_len'][-1] == row['length']
        assert all(b > a for a, b in zip(row['cumulative_len'], row['cumulative_len'][1:]))


def test_pack_marks_boundaries_and_ignores_each_pieces_first_label():
    # Three samples of lengths 3, 5, 2 packed into rows of 4.
    lengths = [3, 5, 2]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.arange(10) + 100
    columns = pack_arrays((offsets, values), (offsets, values.copy()), 4)
    assert columns['cumulative_len'].to_pylist() == [[0, 3, 4], [0, 4], [0, 2]]
    assert columns['input_ids'].to_pylist() == [[100, 101, 102, 103], [104, 105, 106, 107],
                                                [108, 109]]
    labels = columns['labels'].to_pylist()
    assert labels[0] == [IGNORE_INDEX, 101, 102, IGNORE_INDEX]
    assert labels[1] == [IGNORE_INDEX, 105, 106, 107]
    assert labels[2] == [IGNORE_INDEX, 109]


def test_counts_reach_the_log(shared_data, tiny_tokenizer, capsys):
    from mmengine.logging import MMLogger
    MMLogger.get_instance('xft_test_data_counts')
    data = process_hf_dataset(shared_data / MEDQA, tiny_tokenizer, 128,
                              template_map_fn=chatml(), pack_to_max_length=False,
                              max_dataset_length=40)
    message = capsys.readouterr().out
    assert '40 rows loaded' in message
    cut = re.search(r'(\d+) samples truncated to max_length=128', message)
    dropped = re.search(r'(\d+) samples with no trained token dropped', message)
    assert int(cut.group(1)) > 0 and int(dropped.group(1)) > 0
    assert len(data) == 40 - int(dropped.group(1))
    assert 'WARNING' in message


def test_samples_left_without_trained_tokens_are_dropped_and_counted(toy_rows, tiny_tokenizer):
    from xft.dataset.options import PipelineOptions
    from xft.dataset.pipeline import run_pipeline
    # Long prompts and max_length 12: the answers of every sample are cut away.
    options = PipelineOptions(tokenizer=tiny_tokenizer, max_length=12,
                              template_map_fn=chatml(), pack_to_max_length=False)
    data, stats = run_pipeline(toy_rows, options)
    assert stats.samples_truncated == 12
    assert stats.samples_without_loss == 12 - len(data)
    assert len(data) == 0


def test_oasst1_folder_drops_foreign_rows_and_says_so(shared_data, tiny_tokenizer):
    from xft.dataset.load import ORIGIN, load_source
    from xft.dataset.options import PipelineOptions
    from xft.dataset.pipeline import empty_conversations, map_rows
    options = PipelineOptions(tokenizer=tiny_tokenizer, max_length=2048,
                              dataset_map_fn=oasst1_map_fn, pack_to_max_length=False)
    mapped = map_rows(load_source(shared_data / 'oasst1_guanaco'), options)
    empty = empty_conversations(mapped)
    # The Llama-2-templated file in the folder has no '### Human:' markers: its 1000 rows map
    # to empty conversations, which run_pipeline drops, counts and names in the log.
    assert len(empty) == 1000
    assert mapped[empty[0]][ORIGIN].endswith('guanaco_llama2_1k.jsonl line 1')
    assert len(mapped) - len(empty) == 318 + 997


def test_config_dicts_are_built(shared_data, tiny_llama_dir):
    from datasets import load_dataset
    from transformers import AutoTokenizer
    data = process_hf_dataset(
        dataset=dict(type=load_dataset, path='json',
                     data_files=dict(train=str(shared_data / 'alpaca/alpaca_data_subset.json'))),
        tokenizer=dict(type=AutoTokenizer.from_pretrained,
                       pretrained_model_name_or_path=str(tiny_llama_dir),
                       trust_remote_code=True, padding_side='right'),
        max_length=256, dataset_map_fn='alpaca_map_fn', template_map_fn=chatml(),
        max_dataset_length=30, remove_unused_columns=True, pack_to_max_length=False)
    assert data.column_names == ['input_ids', 'labels', 'length']
    assert len(data) == 30


def test_interacting_options_are_checked_first(toy_rows, tiny_tokenizer):
    with pytest.raises(ConfigError, match='use_varlen_attn=True needs pack_to_max_length'):
        process_hf_dataset(toy_rows, tiny_tokenizer, 64, use_varlen_attn=True,
                           pack_to_max_length=False)
    with pytest.raises(ConfigError, match='max_length'):
        process_hf_dataset(toy_rows, tiny_tokenizer, 0)
    with pytest.raises(ConfigError, match='unknown dataset_map_fn'):
        process_hf_dataset(toy_rows, tiny_tokenizer, 64, dataset_map_fn='alpacca_map_fn')


def test_saved_dataset_is_reloaded_without_reprocessing(toy_rows, tiny_tokenizer, tmp_path,
                                                        monkeypatch):
    cache = tmp_path / 'processed'
    first = process_hf_dataset(toy_rows, tiny_tokenizer, 64, template_map_fn=chatml(),
                               cache_dir=cache)
    import xft.dataset.pipeline as pipeline

    def must_not_run(*args, **kwargs):
        raise AssertionError('reprocessed although a matching cache exists')
    monkeypatch.setattr(pipeline, 'run_pipeline', must_not_run)
    second = process_hf_dataset(toy_rows, tiny_tokenizer, 64, template_map_fn=chatml(),
                                cache_dir=cache)
    assert second['input_ids'] == first['input_ids']
    assert second.length == first.length
    # Another max_length is another dataset: it must be reprocessed.
    with pytest.raises(AssertionError, match='reprocessed'):
        process_hf_dataset(toy_rows, tiny_tokenizer, 32, template_map_fn=chatml(),
                           cache_dir=cache)


def test_alpaca_nooutput_rows_are_dropped_and_counted(tmp_path, tiny_tokenizer):
    from xft.dataset.options import PipelineOptions
    from xft.dataset.pipeline import run_pipeline
    rows = [{'instruction': 'Draw a cat.', 'input': '', 'output': '<nooutput>'},
            {'instruction': 'Say hi.', 'input': '', 'output': 'Hi.'}]
    path = tmp_path / 'alpaca.json'
    path.write_text(json.dumps(rows))
    options = PipelineOptions(tokenizer=tiny_tokenizer, max_length=64,
                              dataset_map_fn=alpaca_map_fn, pack_to_max_length=False)
    data, stats = run_pipeline(path, options)
    assert stats.rows_dropped_by_map_fn == 1 and len(data) == 1
    assert stats.first_dropped_row == f'{path} row 1'  # rows count from 1, like lines


def test_hf_chat_template_through_the_pipeline(toy_rows, tiny_tokenizer):
    import copy
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    data = process_hf_dataset(
        toy_rows, tokenizer, 256, pack_to_max_length=False,
        template_map_fn=dict(type=template_map_fn_factory, template='hf_chat_template'))
    plain = process_hf_dataset(toy_rows, tokenizer, 256, pack_to_max_length=False,
                               template_map_fn=chatml())
    # The jinja has no BOS; otherwise it is ChatML, so the ids are chatml's without the BOS.
    assert [ids[1:] for ids in plain['input_ids']] == data['input_ids']
    assert [labels[1:] for labels in plain['labels']] == data['labels']


def test_a_row_the_chat_template_cannot_render_is_named(tmp_path, tiny_tokenizer):
    import copy
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for message in messages %}{% if 'boom' in message['content'] %}"
        "{{ raise_exception('no booms here') }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    # Row 1 is dropped by the map fn, so the failing row is the second one encoded: the
    # message must still name the file's row 3 (rows count from 1).
    rows = [{'instruction': 'Draw a cat.', 'input': '', 'output': '<nooutput>'},
            {'instruction': 'Say hi.', 'input': '', 'output': 'Hi.'},
            {'instruction': 'Say boom.', 'input': '', 'output': 'Boom.'}]
    path = tmp_path / 'alpaca.json'
    path.write_text(json.dumps(rows))
    template = dict(type=template_map_fn_factory, template='hf_chat_template')
    with pytest.raises(DataError, match=f'^{re.escape(str(path))} row 3: the chat_template '
                                        'cannot render this conversation: no booms here'):
        process_hf_dataset(str(path), tokenizer, 64, dataset_map_fn=alpaca_map_fn,
                           template_map_fn=template, pack_to_max_length=False)


def test_concat_dataset_joins_lengths(toy_rows, tiny_tokenizer):
    from xft.dataset import ConcatDataset
    part = dict(type=process_hf_dataset, dataset=str(toy_rows), tokenizer=tiny_tokenizer,
                max_length=64, pack_to_max_length=False)
    joined = ConcatDataset([part, dict(part, max_length=32)])
    assert len(joined) == 24
    assert len(joined.length) == 24 and max(joined.length[12:]) <= 32


def test_two_processes_give_the_same_rows_and_name_a_bad_row(tmp_path, tiny_tokenizer,
                                                             monkeypatch):
    import xft.dataset.pipeline as pipeline
    monkeypatch.setattr(pipeline, 'MIN_ROWS_PER_PROCESS', 100)
    rows = [{'instruction': f'Repeat {i}.', 'input': '', 'output': f'{i}'} for i in range(1200)]
    path = tmp_path / 'many.jsonl'
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    kwargs = dict(dataset_map_fn=alpaca_map_fn, template_map_fn=chatml(),
                  pack_to_max_length=True, remove_unused_columns=True)
    one = process_hf_dataset(path, tiny_tokenizer, 256, map_num_proc=1, **kwargs)
    two = process_hf_dataset(path, tiny_tokenizer, 256, map_num_proc=2, **kwargs)
    assert one['input_ids'] == two['input_ids'] and one['labels'] == two['labels']
    rows[1100] = {'instruction': 'x', 'input': '', 'reply': 'y'}
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    with pytest.raises(DataError, match=f'^{re.escape(str(path))} line 1101: alpaca_map_fn'):
        process_hf_dataset(path, tiny_tokenizer, 256, map_num_proc=2, **kwargs)


def test_parquet_file_and_a_list_of_files(tmp_path, tiny_tokenizer):
    import datasets
    rows = [{'conversation': [{'input': 'a', 'output': 'b'}]}] * 3
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / 'part.parquet'))
    (tmp_path / 'part.json').write_text(json.dumps(rows))
    data = process_hf_dataset([tmp_path / 'part.parquet', tmp_path / 'part.json'],
                              tiny_tokenizer, 64, pack_to_max_length=False)
    assert len(data) == 6


def test_pretraining_text_trains_every_token_but_the_bos(shared_data, tiny_tokenizer):
    from datasets import load_dataset
    from xft.dataset.map_fns import pretrain_map_fn
    data = process_hf_dataset(
        dict(type=load_dataset, path='text',
             data_files=dict(train=str(shared_data / 'pretrain_text/wiki_demo.txt'))),
        tiny_tokenizer, 64, dataset_map_fn=pretrain_map_fn, pack_to_max_length=False)
    assert len(data) == 30
    for row in data:
        assert row['input_ids'][0] == tiny_tokenizer.bos_token_id
        assert row['labels'][0] == IGNORE_INDEX and row['labels'][1:] == row['input_ids'][1:]
        assert tiny_tokenizer.eos_token_id not in row['input_ids']
