"""The newcomer's first hour with `xft train` (issue 16): the headline command without the model,
a trial run in one flag, a quiet console with everything in the log file, and the checks that
come before the model loads."""
import shutil

import pytest

from xft import cli
from xft.engine import model_sources
from xft.engine.config import load_config
from xft.utils.errors import ConfigError
from helpers.newcomer import REPO, tiny_config, train

MISSION = REPO / 'configs' / 'internlm_7b_qlora_oasst1.py'
OASST1 = REPO.parent / 'shared' / 'data' / 'oasst1_guanaco' / 'guanaco_train1k_reconstructed.jsonl'
# What the console leaves out (the first three stay in the log file): the environment, the whole
# config, mmengine's hook table, and library notices.
LOG_FILE_ONLY = ('System environment:', 'INFO - Config:\n', 'Hooks will be executed in the following order')
NOTICES = ('FutureWarning', 'is_gradient_checkpointing', 'gemm_4bit_forward',
           'Setting accelerator to CPU', 'FileClient', 'SyncBatchNorm', 'has no metainfo',
           'scheduler.step()', 'Traceback')


def one_line(capsys):
    err = capsys.readouterr().err
    assert err.count('\n') == 1, err
    return err.strip()


def last_line(capsys):
    """The error line after a progress bar (datasets' bar of the step that failed stays)."""
    err = capsys.readouterr().err
    assert 'Traceback' not in err, err
    return err.strip().splitlines()[-1]


def test_the_headline_command_without_the_hub_is_one_line_naming_the_model_and_the_ways_on(tmp_path):
    """No HF_HUB_OFFLINE, an endpoint that refuses connections: one probe, no retries."""
    result = train(MISSION, HF_HUB_OFFLINE=None, HF_DATASETS_OFFLINE=None,
                   HF_ENDPOINT='http://127.0.0.1:9', HF_HOME=str(tmp_path / 'hf_home'))
    assert result.returncode == 2
    assert result.stdout == '' and result.stderr.count('\n') == 1, result.stdout + result.stderr
    line = result.stderr.strip()
    assert line.startswith("xft train: cannot load the model 'internlm/internlm-7b': not a local "
                           'folder, not in the Hugging Face cache, and the hub cannot be reached '
                           '(http://127.0.0.1:9: ')
    assert ("either point PART 1's pretrained_model_name_or_path in " in line and
            'or pass --cfg-options pretrained_model_name_or_path=DIR, or connect to the network' in line)


def test_offline_the_headline_command_says_so_at_once(capsys):
    assert cli.main(['train', str(MISSION)]) == 2
    assert '(offline: HF_HUB_OFFLINE=1); either point' in one_line(capsys)


def test_an_unreachable_hub_with_every_model_cached_goes_offline(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.delenv('HF_HUB_OFFLINE')
    monkeypatch.setattr(model_sources, 'is_cached', lambda name: True)
    monkeypatch.setattr(model_sources, 'probe_hub', lambda name: 'https://hub: refused')
    model_sources.check_model_sources(load_config(str(MISSION)), MISSION)
    assert constants.HF_HUB_OFFLINE is True
    import os
    assert os.environ['HF_HUB_OFFLINE'] == '1' and os.environ['HF_DATASETS_OFFLINE'] == '1'


def test_a_missing_folder_and_an_adapter_folder_are_not_models(tmp_path, tiny_llama_dir):
    missing = tmp_path / 'no_model'
    with pytest.raises(ConfigError, match=f'^{missing}: no such model folder \\(set in '):
        model_sources.check_model_sources(load_config(
            str(MISSION), {'pretrained_model_name_or_path': str(missing)}), MISSION)
    adapter = tmp_path / 'adapter'
    adapter.mkdir()
    (adapter / 'adapter_config.json').write_text('{}')
    with pytest.raises(ConfigError, match='a PEFT adapter folder, not a model folder'):
        model_sources.check_model_sources(load_config(
            str(MISSION), {'pretrained_model_name_or_path': str(adapter)}), MISSION)


def test_a_trial_run_logs_every_iteration_draws_the_curve_and_keeps_the_console_quiet(
        tmp_path, tiny_llama_dir, capsys):
    """The mission config, two PART 1 variables and one flag. DS_ACCELERATOR unset, as a user has it."""
    work_dir = tmp_path / 'trial'
    result = train(MISSION, '--work-dir', work_dir, '--max-iters', '3', '--cfg-options',
                   f'pretrained_model_name_or_path={tiny_llama_dir}', f'data_path={OASST1}',
                   'max_length=256', DS_ACCELERATOR=None)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]
    for step in (1, 2, 3):
        assert f'Iter(train) [{step}/3]' in result.stdout
    assert 'trial run: 3 iterations, each logged; EvaluateChatHook skipped' in result.stdout
    assert not (work_dir / 'eval_outputs').exists()
    assert (work_dir / 'iter_3.pth').is_file() and (work_dir / 'loss_curve.png').is_file()
    # The data was processed before the Runner was built, and the Runner reused it.
    assert '[xft data] processed dataset saved' in result.stdout
    assert '[xft data] loaded processed dataset from' in result.stdout
    for text in LOG_FILE_ONLY + NOTICES:
        assert text not in console, text
    log = next(work_dir.glob('*/*.log')).read_text()
    for text in LOG_FILE_ONLY:
        assert text in log, text
    print(f'trial run console: {console.count(chr(10))} lines, log file: {log.count(chr(10))} lines')
    capsys.readouterr()
    assert cli.main(['plot-log', str(work_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(work_dir / 'loss_curve.png')


def test_verbose_shows_the_environment_the_config_and_the_hook_table(tmp_path, tiny_llama_dir):
    config = tiny_config(tmp_path, tiny_llama_dir)
    result = train(config, '--work-dir', tmp_path / 'run', '--max-iters', '1', '--verbose')
    assert result.returncode == 0, result.stderr[-3000:]
    for text in LOG_FILE_ONLY:
        assert text in result.stdout, text


def test_resume_without_a_checkpoint_refuses_instead_of_training_from_scratch(
        tmp_path, tiny_llama_dir, capsys):
    config = tiny_config(tmp_path, tiny_llama_dir)
    work_dir = tmp_path / 'empty'
    assert cli.main(['train', str(config), '--work-dir', str(work_dir), '--resume']) == 2
    assert one_line(capsys) == (
        f'xft train: {work_dir}: no checkpoint to resume from (--resume looks for the newest '
        'iter_N.pth named by last_checkpoint there); train without --resume to start from '
        'scratch, or give --resume PATH')


def test_a_data_error_comes_before_the_model_loads(tmp_path, tiny_llama_dir, capsys):
    """The model's weights are garbage: loading them would fail. The bad row is reported first."""
    model = tmp_path / 'model'
    shutil.copytree(tiny_llama_dir, model)
    (model / 'model.safetensors').write_bytes(b'not weights')
    data = tmp_path / 'data.json'
    data.write_text('[{"instruction": "a", "input": "", "output": "b"},\n'
                    ' {"instruction": "c", "input": ""}]')
    config = tiny_config(tmp_path, model, data_file=data)
    assert cli.main(['train', str(config), '--work-dir', str(tmp_path / 'run')]) == 2
    assert last_line(capsys) == (
        f"xft train: {data} row 2: alpaca_map_fn expects fields 'instruction', 'input', 'output'; "
        "field 'output' is missing (row has 'instruction', 'input')")


@pytest.mark.parametrize('option, message', [
    ('model.lora.rr=8', "LoraConfig takes no argument 'rr'; did you mean 'r'?"),
    ('max_lenght=512', "the config has no variable 'max_lenght' and it is not a Runner setting; "
                       "did you mean 'max_length'?"),
])
def test_an_unknown_cfg_option_is_one_line_before_anything_loads(tmp_path, tiny_llama_dir, capsys,
                                                                 option, message):
    config = tiny_config(tmp_path, tiny_llama_dir)
    assert cli.main(['train', str(config), '--cfg-options', option]) == 2
    assert one_line(capsys) == f'xft train: --cfg-options {option.split("=")[0]}: {message}'


def test_max_iters_must_be_positive(tmp_path, tiny_llama_dir, capsys):
    config = tiny_config(tmp_path, tiny_llama_dir)
    assert cli.main(['train', str(config), '--max-iters', '0']) == 2
    assert one_line(capsys) == 'xft train: --max-iters: expected a positive number of iterations, got 0'


def test_nproc_per_node_checks_the_config_once_before_starting_processes(monkeypatch, capsys):
    import subprocess
    monkeypatch.setenv('NPROC_PER_NODE', '8')
    monkeypatch.setattr(subprocess, 'call', lambda *a, **k: pytest.fail('torchrun was started'))
    assert cli.main(['train', 'internlm_7b_qlora_oasst1']) == 2
    assert "cannot load the model 'internlm/internlm-7b'" in one_line(capsys)
