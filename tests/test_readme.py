"""The README is what a newcomer tries first. It lists every verb as `xft help` does; each of its
commands works or fails in one line (a wrong flag would fail with argparse's usage); and its
offline recipe runs exactly as written."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from xft import cli
from helpers.newcomer import REPO, bash_blocks, env

README = REPO / 'README.md'
OFFLINE_HEADING = '### A trial run, offline'
SCRIPTS = {'tools/train.py': ['train'], 'tools/pth_to_hf.py': ['convert', 'pth_to_hf'],
           'tools/merge.py': ['convert', 'merge'], 'tools/chat.py': ['chat']}


def section(text, heading):
    """The README text from ``heading`` to the next heading of the same or a higher level."""
    start = text.index(heading)
    level = heading.split(' ')[0]
    following = re.compile(rf'^#{{1,{len(level)}}} ', re.MULTILINE)
    found = following.search(text, start + len(heading))
    return text[start:found.start() if found else len(text)]


def verb_argv(command):
    """(environment assignments, argv for xft.cli.main) of a README command; None for `make`."""
    words = shlex.split(os.path.expandvars(command))
    assignments = {}
    while words and re.fullmatch(r'[A-Z_]+=\S*', words[0]):
        name, _, value = words.pop(0).partition('=')
        assignments[name] = value
    if words[0] == 'make':
        return None
    if words[0] == 'xft':
        return assignments, words[1:]
    assert words[0] == 'python' and words[1] in SCRIPTS, f'README command of an unknown kind: {command}'
    return assignments, SCRIPTS[words[1]] + words[2:]


def test_the_readme_lists_every_verb_as_xft_help_does():
    rows = re.findall(r'^\| `xft ([\w-]+(?: \w+)?)` \| (.+) \|$', README.read_text(), re.MULTILINE)
    expected = []
    for verb, (_, _, text) in cli.VERBS.items():
        if verb == 'convert':
            expected += [(f'convert {name}', sub_text) for name, (_, _, sub_text) in cli.CONVERT_VERBS.items()]
        else:
            expected.append((verb, text))
    assert rows == expected


def test_every_readme_command_works_or_fails_in_one_line(tmp_path, monkeypatch, capsys):
    """Run in this process, as `xft` verbs, from a scratch folder holding the repository's
    configs; the hub is off. The offline recipe runs in its own (slow) test below."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'configs').symlink_to(REPO / 'configs')
    monkeypatch.setattr(subprocess, 'call', lambda *a, **k: pytest.fail('torchrun was started'))
    text = README.read_text()
    commands = [c for c in bash_blocks(text.replace(section(text, OFFLINE_HEADING), ''))]
    checked = 0
    for command in commands:
        parsed = verb_argv(command)
        if parsed is None:
            continue
        assignments, argv = parsed
        with monkeypatch.context() as scoped:
            for name, value in assignments.items():
                scoped.setenv(name, value)
            try:
                code = cli.main(argv)
            except SystemExit as exit_info:  # argparse: a flag the verb does not have
                code = exit_info.code
        err = capsys.readouterr().err
        assert code == 0 or (code == 2 and err.count('\n') == 1 and err.startswith('xft ')), \
            f'{command}\nexit {code}\n{err[-2000:]}'
        checked += 1
    assert checked == 8, commands


@pytest.mark.slow
def test_the_offline_recipe_runs_as_written(tmp_path):
    """Verbatim, in bash, from a checkout's root (configs and tools linked in, the shared data
    beside it), after `make demo` prepared the model it names."""
    from xft.tools.prepare_demo_model import prepare_demo_model
    prepare_demo_model(Path.home() / '.cache' / 'xft', log=lambda *a: None)
    checkout, bin_dir = tmp_path / 'xft', tmp_path / 'bin'
    checkout.mkdir()
    bin_dir.mkdir()
    for name in ('configs', 'tools'):
        (checkout / name).symlink_to(REPO / name)
    (tmp_path / 'shared').symlink_to(REPO.parent / 'shared')
    for name, target in (('python', f'exec {sys.executable} "$@"'), ('xft', 'exec python -m xft.cli "$@"')):
        (bin_dir / name).write_text(f'#!/bin/sh\n{target}\n')
        (bin_dir / name).chmod(0o755)
    recipe = bash_blocks(section(README.read_text(), OFFLINE_HEADING))
    assert len(recipe) == 2 and '--max-iters 3' in recipe[0] and recipe[1].startswith('xft plot-log')
    outputs = []
    for command in recipe:
        result = subprocess.run(['bash', '-c', command], cwd=checkout, capture_output=True, text=True,
                                timeout=900, env=env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'))
        assert result.returncode == 0, f'{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}'
        outputs.append(result.stdout)
    work_dir = checkout / 'work_dirs' / 'internlm_7b_qlora_oasst1'
    assert 'SupervisedFinetune: QLoRA fine-tuning' in outputs[0]
    assert all(f'Iter(train) [{step}/3]' in outputs[0] for step in (1, 2, 3))
    assert (work_dir / 'iter_3.pth').is_file()
    assert outputs[1].strip() == 'work_dirs/internlm_7b_qlora_oasst1/loss_curve.png'
    assert (work_dir / 'loss_curve.png').is_file()
