"""Training runs of tests/configs/tiny_sft.py on the tiny Llama, the way `xft train` runs them.

``train_in_process`` builds the Runner in the test process with tools/train.py's own functions
(``parse_args``, ``build_train_config``, ``train``): no Python start and no re-import of the model
stack per run, which is most of a tiny run's time. Use it wherever nothing about the process
itself is under test. ``run_train`` starts tools/train.py as a subprocess: for a signal, a kill,
a file size limit, a second process, or the exit status and stderr of the command itself.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.paths import REPO, TESTS

TINY_CONFIG = TESTS / 'configs' / 'tiny_sft.py'
# method -> (the config's `lora=` value, its `quantization_config=` value)
METHODS = {'lora': ('lora', 'None'), 'qlora': ('lora', 'quantization_config'),
           'full': ('None', 'None')}


def write_tiny_config(folder, model_dir, data_file, method='lora', name=None, hooks=()):
    """tests/configs/tiny_sft.py with its paths and method filled in, saved as ``folder/name.py``.

    ``hooks`` = [(hook class name in helpers.faults, kwargs), ...] become its ``custom_hooks``.
    """
    lora, quantization = METHODS[method]
    text = (TINY_CONFIG.read_text().replace('@MODEL@', str(model_dir))
            .replace('@DATA@', str(data_file)).replace('@LORA@', lora)
            .replace('@QUANTIZATION@', quantization))
    if hooks:
        names = sorted({hook for hook, _ in hooks})
        entries = ', '.join(f'dict(type={hook}, **{kwargs!r})' for hook, kwargs in hooks)
        text = f'from helpers.faults import {", ".join(names)}\n{text}\ncustom_hooks = [{entries}]\n'
    path = Path(folder) / f'{name or "tiny_" + method}.py'
    path.write_text(text)
    return path


@dataclass
class Run:
    """A finished in-process run: its runner and the text of its log file."""
    runner: object
    log: str


def train_in_process(*args) -> Run:
    """``xft train ARGS`` in this process.

    mmengine keeps loggers, visualizers and message hubs as per-name singletons; a fresh
    experiment name per run keeps two runs of one config apart (the default name, config stem
    plus a timestamp in seconds, can repeat). Signal handlers are put back even when the run
    raises, so a failing test leaves the worker as it found it.
    """
    from xft.tools.train import build_train_config, parse_args, train

    cfg = build_train_config(parse_args([str(arg) for arg in args]))
    cfg.experiment_name = f'{Path(str(args[0])).stem}_{uuid.uuid4().hex[:12]}'
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        runner = train(cfg)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    log_file = Path(runner.log_dir) / f'{runner.timestamp}.log'
    return Run(runner, log_file.read_text())


def train_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), str(REPO),
                                                        os.environ.get('PYTHONPATH')])))
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1, for a launched group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def kill_tree(pid):
    """SIGKILL a process and all its descendants. Not a process-group kill: torchrun starts each
    rank in a session of its own, so killing the launcher's group once left two ranks waiting on
    each other for gloo's 30 minutes, holding the pipes the test was reading (CI, 2026-12-07)."""
    import psutil
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


def run_launched(command, env, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    """Run a command that starts its own processes (torchrun and its ranks). On a timeout the
    whole tree is killed, so no rank is left holding a core (or our pipes) while the rest of the
    suite runs, and the test fails with the tail of what the ranks printed."""
    process = subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=cwd)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(f'{" ".join(map(str, command[:4]))} ... ran past {timeout} s; its last output:\n'
                    f'{stdout[-2000:]}\n{stderr[-4000:]}')
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def train_command(*args):
    return [sys.executable, str(REPO / 'tools' / 'train.py'), *map(str, args)]


def run_train(*args, expect_rc=0, preexec_fn=None, timeout=300):
    """``python tools/train.py ARGS`` as a subprocess; fails the test on another exit status."""
    result = subprocess.run(train_command(*args), capture_output=True, text=True, env=train_env(),
                            timeout=timeout, preexec_fn=preexec_fn)
    if expect_rc is not None and result.returncode != expect_rc:
        pytest.fail(f'train exited {result.returncode}, expected {expect_rc}:\n{result.stderr[-4000:]}')
    return result


def logged_losses(work_dir) -> dict:
    """{iteration: loss} over every run logged in ``work_dir`` (a later run wins)."""
    losses = {}
    for run in sorted(p for p in Path(work_dir).iterdir() if p.is_dir() and (p / 'vis_data').is_dir()):
        scalars = run / 'vis_data' / 'scalars.json'
        if scalars.is_file():
            for row in map(json.loads, scalars.read_text().splitlines()):
                if 'loss' in row:
                    losses[row['iter']] = row['loss']
    return losses


def last_checkpoint(work_dir) -> str:
    return Path(work_dir, 'last_checkpoint').read_text().strip()


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ''
