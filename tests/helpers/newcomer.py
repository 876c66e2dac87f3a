"""Helpers for the newcomer tests (issue 16): the tiny config, a training subprocess, the README's
bash blocks, and an evaluation hook that is slow on purpose.

Configs import the hook from here inside the training subprocess (``tests`` is put on
``PYTHONPATH``)."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from xft.engine.hooks.evaluate_chat_hook import EvaluateChatHook

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / 'tests'
TINY_TEMPLATE = TESTS / 'configs' / 'tiny_sft.py'
ALPACA = REPO.parent / 'shared' / 'data' / 'alpaca' / 'alpaca_data_subset.json'
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.MULTILINE | re.DOTALL)
# How long a stopped run may take to exit in these tests: far below the slow hook's 600 s.
EXIT_WITHIN_S = 120


def tiny_config(folder, model_dir, data_file=ALPACA, name='tiny', imports='', extra=''):
    """The suite's tiny LoRA config (tests/configs/tiny_sft.py): ``imports`` put first,
    ``extra`` appended."""
    text = (TINY_TEMPLATE.read_text().replace('@MODEL@', str(model_dir))
            .replace('@DATA@', str(data_file)).replace('@LORA@', 'lora')
            .replace('@QUANTIZATION@', 'None'))
    path = Path(folder) / f'{name}.py'
    path.write_text(imports + text + extra)
    return path


def env(**extra):
    """The environment of a training subprocess: this worktree and the tests on the path."""
    values = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
                  PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), str(TESTS),
                                                           os.environ.get('PYTHONPATH')])))
    values.update(extra)
    return {key: value for key, value in values.items() if value is not None}


def train(*args, timeout=600, **env_extra):
    """``python tools/train.py ARGS`` as a user runs it; the CompletedProcess."""
    return subprocess.run([sys.executable, str(REPO / 'tools' / 'train.py'), *map(str, args)],
                          capture_output=True, text=True, env=env(**env_extra), timeout=timeout)


def bash_blocks(markdown: str) -> list:
    """The ```bash blocks of a markdown text, continuation lines joined, comments dropped."""
    commands = []
    for language, body in FENCE.findall(markdown):
        if language != 'bash':
            continue
        for line in body.replace('\\\n', ' ').splitlines():
            line = line.split('  #')[0].strip()
            if line and not line.startswith('#'):
                commands.append(re.sub(r'\s+', ' ', line))
    return commands


class SlowEvaluateChatHook(EvaluateChatHook):
    """An EvaluateChatHook whose generation takes 600 s, as the mission config's does on a CPU.

    Evaluations before ``signal_at`` (an iteration; 0 is the one before training) answer at
    once; from it on, each takes 600 s, and the one at ``signal_at`` first sends ``signal_name``
    to its own process, so the signal arrives while it runs. The test then sees whether the run
    waits for the answers or stops.
    """

    def __init__(self, *args, signal_at=None, signal_name='SIGTERM', **kwargs):
        super().__init__(*args, **kwargs)
        self.signal_at, self.signal_name = signal_at, signal_name
        self._evaluating = None

    def _evaluate(self, runner, iteration):
        self._evaluating = iteration
        return super()._evaluate(runner, iteration)

    def _generate(self, llm):
        if self.signal_at is not None and self._evaluating >= self.signal_at:
            if self._evaluating == self.signal_at:
                os.kill(os.getpid(), signal.Signals[self.signal_name])
            time.sleep(600)  # from signal_at on, each evaluation takes 600 s
        return super()._generate(llm)
