"""Issue 16's bad input, and the one convention every verb follows for it: one line on stderr,
`xft VERB: <file/row/key>: <what was expected>`, exit code 2, no traceback."""
import json
import shutil

import pytest
import torch

from xft import cli
from helpers.newcomer import tiny_config


def error_line(capsys, argv, code=2):
    assert cli.main([str(arg) for arg in argv]) == code
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    return err.strip()


@pytest.fixture
def config(tmp_path, tiny_llama_dir):
    return tiny_config(tmp_path, tiny_llama_dir)


def test_pth_to_hf_given_a_text_file(tmp_path, config, capsys):
    text = tmp_path / 'notes.pth'
    text.write_text('hello, this is not a checkpoint\n')
    line = error_line(capsys, ['convert', 'pth_to_hf', config, text, tmp_path / 'out'])
    assert line.startswith(f'xft convert pth_to_hf: {text}: not a readable checkpoint (')
    assert line.endswith('expected a .pth file written by xft train (is it cut short, or another '
                         'kind of file?)')
    assert not (tmp_path / 'out').exists()


def test_pth_to_hf_given_a_truncated_checkpoint(tmp_path, config, capsys):
    whole = tmp_path / 'whole.pth'
    torch.save({'state_dict': {'llm.lm_head.weight': torch.zeros(64, 64)}, 'meta': {}}, whole)
    cut = tmp_path / 'iter_1.pth'
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    line = error_line(capsys, ['convert', 'pth_to_hf', config, cut, tmp_path / 'out'])
    assert line.startswith(f'xft convert pth_to_hf: {cut}: not a readable checkpoint (')


def test_chat_with_a_folder_without_config_json(tmp_path, tiny_llama_dir, capsys):
    tokenizer_only = tmp_path / 'tokenizer_only'
    shutil.copytree(tiny_llama_dir, tokenizer_only)
    (tokenizer_only / 'config.json').unlink()
    line = error_line(capsys, ['chat', tokenizer_only, '--prompt', 'hi'])
    assert line == (f'xft chat: {tokenizer_only}: no config.json in this folder; expected a Hugging '
                    'Face model folder (config.json and the weights), e.g. the output of xft convert merge')


def test_chat_with_an_adapter_folder_as_the_model(tmp_path, capsys):
    adapter = tmp_path / 'adapter'
    adapter.mkdir()
    (adapter / 'adapter_config.json').write_text('{}')
    line = error_line(capsys, ['chat', adapter, '--prompt', 'hi'])
    assert line.startswith(f'xft chat: {adapter}: a PEFT adapter folder, not a model folder')


def test_an_alpaca_row_without_output_names_the_row_from_1_and_only_the_fields_it_has(
        tmp_path, tiny_llama_dir, capsys):
    data = tmp_path / 'alpaca.json'
    rows = [{'instruction': 'a', 'input': '', 'output': 'b'}, {'instruction': 'c', 'input': ''}]
    data.write_text(json.dumps(rows))
    config = tiny_config(tmp_path, tiny_llama_dir, data_file=data)
    line = error_line(capsys, ['check-custom-dataset', config])
    assert line == (f"xft check-custom-dataset: {data} row 2: alpaca_map_fn expects fields "
                    "'instruction', 'input', 'output'; field 'output' is missing "
                    "(row has 'instruction', 'input')")


@pytest.mark.parametrize('argv, verb', [
    (['train', 'no_such_config'], 'train'),
    (['copy-cfg', 'no_such_config', '.'], 'copy-cfg'),
    (['convert', 'pth_to_hf', 'no_such_config', 'x.pth', 'out'], 'convert pth_to_hf'),
    (['convert', 'merge', 'base', 'not_an_adapter', 'out'], 'convert merge'),
    (['chat', 'no_such_model_folder/'], 'chat'),
    (['check-custom-dataset', 'no_such_config'], 'check-custom-dataset'),
    (['log-dataset', 'no_such_config'], 'log-dataset'),
    (['plot-log', 'no_such_work_dir'], 'plot-log'),
    (['convert', 'to_gguf'], 'convert'),
], ids=lambda value: value if isinstance(value, str) else None)
def test_every_verb_says_bad_input_in_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys,
                                                                 argv, verb):
    monkeypatch.chdir(tmp_path)
    assert error_line(capsys, argv).startswith(f'xft {verb}: ')
