"""Every verb that takes a config takes a bare zoo name too, through the one loader
(``xft.engine.config.load_config``), as ``xft train NAME`` always did.

A fake zoo (``REPO_CONFIGS`` pointed at a temporary folder) holds the tiny end-to-end config
under a name no real config has; each verb is run in-process through ``xft.cli.main``.
"""
import re
from pathlib import Path

import pytest

from xft import cli

REPO = Path(__file__).resolve().parents[1]
NAME = 'tiny_zoo_entry_for_names'


@pytest.fixture
def fake_zoo(tmp_path, monkeypatch, tiny_llama_dir, shared_data):
    import xft.engine.config as config
    zoo = tmp_path / 'zoo' / 'tiny'
    zoo.mkdir(parents=True)
    text = ((REPO / 'tests' / 'configs' / 'tiny_sft.py').read_text()
            .replace('@MODEL@', str(tiny_llama_dir))
            .replace('@DATA@', str(shared_data / 'alpaca' / 'alpaca_data_subset.json'))
            .replace('@LORA@', 'lora').replace('@QUANTIZATION@', 'None'))
    (zoo / f'{NAME}.py').write_text(text)
    monkeypatch.setattr(config, 'REPO_CONFIGS', zoo.parent)
    return zoo


def check_train(tmp_path, capsys):
    from xft.tools import train
    cfg = train.build_train_config(train.parse_args([NAME]))
    assert cfg.filename.endswith(f'{NAME}.py') and Path(cfg.work_dir).name == NAME


def check_pth_to_hf(tmp_path, capsys):
    missing = tmp_path / 'iter_1.pth'
    assert cli.main(['convert', 'pth_to_hf', NAME, str(missing), str(tmp_path / 'out')]) == 2
    # The config loaded (step 1 of 4); the checkpoint is what is missing.
    assert f'{missing}: checkpoint file not found' in capsys.readouterr().err


def check_custom_dataset(tmp_path, capsys):
    assert cli.main(['check-custom-dataset', NAME]) == 0
    assert '64 rows loaded' in capsys.readouterr().out


def check_log_dataset(tmp_path, capsys):
    assert cli.main(['log-dataset', NAME, '--show', 'text']) == 0
    assert '=== row 0 ===' in capsys.readouterr().out


def check_copy_cfg(tmp_path, capsys):
    assert cli.main(['copy-cfg', NAME, str(tmp_path / 'mine')]) == 0
    assert (tmp_path / 'mine' / f'{NAME}_copy.py').is_file()


CONFIG_VERBS = {
    'train': check_train,
    'convert pth_to_hf': check_pth_to_hf,
    'check-custom-dataset': check_custom_dataset,
    'log-dataset': check_log_dataset,
    'copy-cfg': check_copy_cfg,
}


def takes_a_config(argv, capsys) -> bool:
    """True when ``xft ARGV --help`` lists a positional argument named ``config``."""
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, '--help'])
    assert stop.value.code == 0
    usage = capsys.readouterr().out
    positional = usage.split('positional arguments:')[-1].split('options:')[0]
    return 'positional arguments:' in usage and re.search(r'^\s+config\b', positional,
                                                         re.MULTILINE) is not None


def test_the_list_holds_every_verb_that_takes_a_config(capsys):
    commands = [[verb] for verb in cli.VERBS if cli.VERBS[verb][0] is not None]
    commands += [['convert', verb] for verb in cli.CONVERT_VERBS]
    found = {' '.join(argv) for argv in commands if takes_a_config(argv, capsys)}
    assert found == set(CONFIG_VERBS)


@pytest.mark.parametrize('verb', sorted(CONFIG_VERBS))
def test_a_bare_zoo_name_works_for(verb, fake_zoo, tmp_path, capsys):
    CONFIG_VERBS[verb](tmp_path, capsys)


def test_an_unknown_name_is_one_line_for_the_data_commands(fake_zoo, capsys):
    assert cli.main(['check-custom-dataset', 'no_such_config_anywhere']) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'no_such_config_anywhere: no such config file' in err
