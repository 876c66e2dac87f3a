"""The data commands: check-custom-dataset, log-dataset, list-dataset-format."""
import json

import pytest

from xft.tools.dataset_tools import (check_custom_dataset_main, list_dataset_format_main,
                                     log_dataset_main)

CONFIG = '''
from datasets import load_dataset
from transformers import AutoTokenizer
from xft.dataset import process_hf_dataset
from xft.dataset.collate_fns import default_collate_fn
from xft.dataset.map_fns import {map_fn}, template_map_fn_factory
from xft.utils import PROMPT_TEMPLATE

tokenizer = dict(type=AutoTokenizer.from_pretrained,
                 pretrained_model_name_or_path='{model}', padding_side='right')
train_dataloader = dict(
    batch_size=1,
    dataset=dict(
        type=process_hf_dataset,
        dataset=dict(type=load_dataset, path='json', data_files=dict(train='{data}')),
        tokenizer=tokenizer, max_length={max_length}, dataset_map_fn={map_fn},
        template_map_fn=dict(type=template_map_fn_factory, template=PROMPT_TEMPLATE.chatml),
        remove_unused_columns=True, pack_to_max_length={pack}, map_num_proc=1),
    collate_fn=dict(type=default_collate_fn))
'''


def write_config(tmp_path, model, rows, map_fn='alpaca_map_fn', max_length=128, pack=False):
    data = tmp_path / 'data.json'
    data.write_text(json.dumps(rows))
    config = tmp_path / 'config.py'
    config.write_text(CONFIG.format(model=model, data=data, map_fn=map_fn,
                                    max_length=max_length, pack=pack))
    return config


ROWS = [{'instruction': 'Say hi.', 'input': '', 'output': 'Hi there.'},
        {'instruction': 'Count to three.', 'input': '', 'output': 'One, two, three.'}]


def test_check_custom_dataset_shows_every_stage_and_counts(tmp_path, tiny_llama_dir, capsys):
    config = write_config(tmp_path, tiny_llama_dir, ROWS, pack=True)
    assert check_custom_dataset_main([str(config)]) == 0
    out = capsys.readouterr().out
    for stage in ('load', 'map', 'template', 'encode', 'pack'):
        assert f'--- after {stage}:' in out
    assert '2 rows loaded' in out and 'packed into 1 rows' in out
    assert '«Hi there.<|im_end|>»' in out
    assert 'no problems found' in out


def test_check_custom_dataset_lists_problems(tmp_path, tiny_llama_dir, capsys):
    rows = ROWS + [{'instruction': 'Write a long story. ' * 40, 'input': '', 'output': 'No.'}]
    config = write_config(tmp_path, tiny_llama_dir, rows, max_length=48)
    assert check_custom_dataset_main([str(config)]) == 0
    out = capsys.readouterr().out
    assert '1 samples are longer than max_length=48' in out
    assert '1 samples have no trained token left' in out


def test_check_custom_dataset_reports_bad_data_in_one_line(tmp_path, tiny_llama_dir, capsys):
    config = write_config(tmp_path, tiny_llama_dir, [{'question': 'a', 'answer': 'b'}])
    assert check_custom_dataset_main([str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err
    assert err.startswith('xft check-custom-dataset: ') and "alpaca_map_fn expects fields" in err
    assert 'data.json row 1' in err


def test_check_custom_dataset_missing_config(tmp_path, capsys):
    assert check_custom_dataset_main([str(tmp_path / 'none.py')]) == 2
    assert 'no such config file' in capsys.readouterr().err


@pytest.mark.parametrize('show, present, absent', [
    ('text', '[text]', '[labels]'),
    ('masked_text', '«Hi there.<|im_end|>»', '[input_ids]'),
    ('labels', '-100', '[text]'),
    ('all', '[input_ids]', 'error'),
])
def test_log_dataset(tmp_path, tiny_llama_dir, capsys, show, present, absent):
    config = write_config(tmp_path, tiny_llama_dir, ROWS)
    assert log_dataset_main([str(config), '--show', show, '--count', '2']) == 0
    out = capsys.readouterr().out
    assert '=== row 1 ===' in out and present in out and absent not in out


def test_list_dataset_format(capsys):
    assert list_dataset_format_main([]) == 0
    out = capsys.readouterr().out
    assert 'openai_map_fn' in out and 'messages [{role' in out
    assert 'chatml' in out and 'hf_chat_template' in out


def test_cfg_options_override_the_data(tmp_path, tiny_llama_dir, capsys):
    config = write_config(tmp_path, tiny_llama_dir, ROWS)
    other = tmp_path / 'other.json'
    other.write_text(json.dumps(ROWS * 3))
    assert check_custom_dataset_main([
        str(config), '--cfg-options',
        f'train_dataloader.dataset.dataset.data_files.train={other}']) == 0
    assert '6 rows loaded' in capsys.readouterr().out


def test_a_tokenizer_that_cannot_be_loaded_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path, tmp_path / 'no_model_here', ROWS)
    assert check_custom_dataset_main([str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('xft check-custom-dataset: cannot build the tokenizer')
