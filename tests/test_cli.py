"""The `xft` command: verbs, help, config names, torchrun launching, one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xft import cli
from xft.tools import cfg_tools, gen_configs

REPO = Path(__file__).resolve().parents[1]
XFT = Path(sys.executable).parent / 'xft'


def run_main(capsys, *argv):
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_verb_users_know(capsys):
    code, out, _ = run_main(capsys, 'help')
    assert code == 0
    for verb in ['list-cfg', 'copy-cfg', 'train', 'convert', 'chat', 'check-custom-dataset',
                 'log-dataset', 'list-dataset-format', 'prepare-demo-model', 'plot-log', 'version']:
        assert f'\n  {verb} ' in out, verb


@pytest.mark.parametrize('argv', [[verb] for verb, (module, _, _) in cli.VERBS.items() if module] +
                         [['convert', 'pth_to_hf'], ['convert', 'merge']], ids=' '.join)
def test_every_verb_answers_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, '--help'])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert 'usage:' in out, out[:200]


def test_help_verb_is_verb_dash_dash_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(['help', 'copy-cfg'])
    assert 'usage: xft copy-cfg' in capsys.readouterr().out
    code, out, _ = run_main(capsys, 'help', 'convert')
    assert code == 0 and 'pth_to_hf' in out and 'merge' in out


def test_list_cfg_filters_by_every_word(capsys):
    code, out, _ = run_main(capsys, 'list-cfg')
    assert code == 0
    everything = out.split()
    assert len(everything) == len(list((REPO / 'configs').rglob('*.py')))
    code, out, _ = run_main(capsys, 'list-cfg', '-p', 'llama2_7b_chat', 'QLORA')
    names = out.split()
    assert code == 0 and 'llama2_7b_chat_qlora_alpaca_e3' in names
    assert all('llama2_7b_chat' in name and 'qlora' in name for name in names)
    code, out, err = run_main(capsys, 'list-cfg', '-p', 'no_such_model')
    assert code == 1 and out == '' and err.count('\n') == 1


def test_copy_cfg_copies_by_bare_name_and_the_copy_trains_by_path(tmp_path, capsys):
    code, out, _ = run_main(capsys, 'copy-cfg', 'qwen1_5_7b_chat_lora_oasst1_e3', tmp_path / 'mine')
    copy = tmp_path / 'mine' / 'qwen1_5_7b_chat_lora_oasst1_e3_copy.py'
    assert code == 0 and str(copy) in out
    original = REPO / 'configs/qwen/qwen1_5_7b_chat/qwen1_5_7b_chat_lora_oasst1_e3.py'
    # The same config; only the header changes, to train the copy (tests/test_configs_zoo.py).
    body = cfg_tools.split_header(copy.read_text())[1]
    assert body == cfg_tools.split_header(original.read_text())[1]
    # The bare name still means the zoo's file; the copy is reached by its path.
    from xft.engine.config import resolve_config
    assert resolve_config('qwen1_5_7b_chat_lora_oasst1_e3') == original
    assert resolve_config(str(copy)) == copy


def test_copy_cfg_errors_are_one_line(tmp_path, capsys):
    code, _, err = run_main(capsys, 'copy-cfg', 'no_such_config', tmp_path)
    assert code == 2 and err.count('\n') == 1 and 'no_such_config' in err and 'list-cfg' in err
    a_file = tmp_path / 'file.txt'
    a_file.write_text('x')
    code, _, err = run_main(capsys, 'copy-cfg', 'llama2_7b_chat_qlora_alpaca_e3', a_file)
    assert code == 2 and 'not a folder' in err and err.count('\n') == 1


def test_copy_cfg_keeps_an_edited_copy(tmp_path, capsys):
    assert run_main(capsys, 'copy-cfg', 'llama2_7b_chat_qlora_alpaca_e3', tmp_path)[0] == 0
    copy = tmp_path / 'llama2_7b_chat_qlora_alpaca_e3_copy.py'
    assert run_main(capsys, 'copy-cfg', 'llama2_7b_chat_qlora_alpaca_e3', tmp_path)[0] == 0  # unedited: fine
    edited = copy.read_text().replace('max_length = 2048', 'max_length = 1024')
    assert edited != copy.read_text()
    copy.write_text(edited)
    code, _, err = run_main(capsys, 'copy-cfg', 'llama2_7b_chat_qlora_alpaca_e3', tmp_path)
    assert code == 2 and err.count('\n') == 1 and 'a copy is already there' in err
    assert copy.read_text() == edited


def test_unknown_verb_and_unknown_conversion(capsys):
    code, _, err = run_main(capsys, 'frobnicate')
    assert code == 2 and err == "xft: unknown verb 'frobnicate'; run `xft help` for the list\n"
    code, _, err = run_main(capsys, 'convert', 'to_gguf', 'x')
    assert code == 2 and err.startswith("xft convert: unknown conversion 'to_gguf'") and err.count('\n') == 1


def test_a_missing_verb_module_is_one_line_not_an_import_traceback(monkeypatch, capsys):
    monkeypatch.setitem(cli.VERBS, 'demo', ('xft.tools.no_such_module', 'main', 'gone'))
    code, _, err = run_main(capsys, 'demo')
    assert code == 2 and err.count('\n') == 1
    assert err.startswith('xft demo: this command is not available') and 'no_such_module' in err


def test_a_user_error_inside_a_verb_is_one_line(monkeypatch, capsys):
    from xft.utils.errors import DataError

    def broken(argv):
        raise DataError('data.json row 17: expected key \'output\'')

    monkeypatch.setattr(cfg_tools, 'list_cfg_main', broken)
    code, _, err = run_main(capsys, 'list-cfg')
    assert code == 2 and err == "xft list-cfg: data.json row 17: expected key 'output'\n"


def test_nproc_per_node_launches_torchrun_with_xtuners_variables():
    command = cli.torchrun_command(['llama2_7b_chat_qlora_alpaca_e3', '--work-dir', 'w'],
                                   {'NPROC_PER_NODE': '8', 'NNODES': '2', 'NODE_RANK': '1',
                                    'ADDR': '10.0.0.1', 'PORT': '29600'})
    assert command[-7:] == ['-m', 'xft.tools.train', 'llama2_7b_chat_qlora_alpaca_e3', '--work-dir', 'w',
                            '--launcher', 'pytorch']
    assert {'--nproc_per_node=8', '--nnodes=2', '--node_rank=1', '--master_addr=10.0.0.1',
            '--master_port=29600'} <= set(command)
    single = cli.torchrun_command(['cfg'], {'NPROC_PER_NODE': '2'})
    assert {'--nnodes=1', '--node_rank=0', '--master_addr=127.0.0.1', '--master_port=29500'} <= set(single)


def test_bad_nproc_per_node_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv('NPROC_PER_NODE', 'eight')
    code, _, err = run_main(capsys, 'train', 'llama2_7b_chat_qlora_alpaca_e3')
    assert code == 2 and err == "xft train: NPROC_PER_NODE must be a positive number of processes, got 'eight'\n"
    # --help is answered here, not by N processes.
    with pytest.raises(SystemExit):
        cli.main(['train', '--help'])


def test_version(capsys):
    from xft import __version__
    assert run_main(capsys, 'version')[:2] == (0, f'{__version__}\n')


@pytest.mark.parametrize('argv, expected', [
    (['train', 'no_such_config'], 'no_such_config: no such config file'),
    (['copy-cfg', 'no_such_config', '.'], 'no_such_config: no such config file'),
    (['plot-log', 'no_such_work_dir'], 'no_such_work_dir: no such work dir'),
])
def test_installed_xft_command_errors_are_one_line_without_traceback(argv, expected, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', OMP_NUM_THREADS='1')
    result = subprocess.run([str(XFT), *argv], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=120)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith('xft ')]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_the_generator_check_mode_reports_no_drift(capsys):
    assert gen_configs.main(['--check']) == 0
    assert capsys.readouterr().out.startswith(f'0 of {len(gen_configs.zoo_entries())} configs differ')
