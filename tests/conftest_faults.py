"""Helpers for the distributed, fault and exact-resume tests: the tiny LoRA config with a few
settings changed, a training subprocess, and test-only hooks that inject real faults
(a signal sent to the training process itself, a SIGKILL while a checkpoint is being
written, NaN embeddings for marked samples).

The hooks run inside the training subprocess; configs import them from this module
(``tests`` is put on ``PYTHONPATH``)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / 'tests' / 'configs' / 'tiny_sft.py'
TESTS = REPO / 'tests'

# The reference schedule: one sample per micro-batch, two micro-batches per optimizer step,
# LoRA dropout on (so the random generators matter), a constant learning rate (so that 2
# processes x 1 micro-batch and 1 process x 2 micro-batches see the same one at each step),
# checkpoints every 5 iterations (5 is inside an accumulation window), and each iteration's
# own loss in the log (mmengine logs a 10-iteration moving mean by default).
REFERENCE_OPTIONS = ('train_dataloader.batch_size=1', 'optim_wrapper.accumulative_counts=2',
                     'model.lora.lora_dropout=0.1', 'param_scheduler.0.start_factor=1.0',
                     'train_cfg.max_iters=12', 'default_hooks.checkpoint.interval=5',
                     'train_dataloader.dataset.max_dataset_length=24', 'log_processor.window_size=1')


def write_config(folder, model_dir, data_file, name='tiny_lora', hooks=()):
    """The tiny LoRA config; ``hooks`` = [(hook class name in this module, kwargs), ...]
    become its ``custom_hooks``."""
    text = (TEMPLATE.read_text().replace('@MODEL@', str(model_dir)).replace('@DATA@', str(data_file))
            .replace('@LORA@', 'lora').replace('@QUANTIZATION@', 'None'))
    if hooks:
        names = sorted({name for name, _ in hooks})
        entries = ', '.join(f'dict(type={name}, **{kwargs!r})' for name, kwargs in hooks)
        text = f'from conftest_faults import {", ".join(names)}\n{text}\ncustom_hooks = [{entries}]\n'
    path = Path(folder) / f'{name}.py'
    path.write_text(text)
    return path


def train_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get('PYTHONPATH')])))
    env.update(extra)
    return env


def train_command(*args):
    return [sys.executable, str(REPO / 'tools' / 'train.py'), *map(str, args)]


def run_train(*args, expect_rc=0, preexec_fn=None, timeout=300):
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


class SendSignalHook(Hook):
    """Sends ``signum`` to its own process after iteration ``at_iter`` (before the
    PreemptionHook of that iteration looks for it): a real signal at a known point."""

    priority = 'VERY_HIGH'

    def __init__(self, at_iter, signum='SIGTERM'):
        self.at_iter = at_iter
        self.signum = signal.Signals[signum]

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at_iter:
            os.kill(os.getpid(), self.signum)


class KillWhileSavingHook(Hook):
    """SIGKILLs its own process while the checkpoint of ``at_iter`` is being written.

    A large tensor added to that checkpoint makes the write last long enough; a thread
    watches the checkpoint folder and kills the process as soon as a new file appears."""

    def __init__(self, at_iter, payload_mb=96):
        self.at_iter = at_iter
        self.payload_mb = payload_mb

    def before_save_checkpoint(self, runner, checkpoint):
        if checkpoint['meta']['iter'] != self.at_iter:
            return
        checkpoint['payload'] = torch.ones(self.payload_mb * 2 ** 18)
        folder = Path(runner.work_dir)
        before = set(os.listdir(folder))

        def kill_when_writing():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if set(os.listdir(folder)) - before:
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.0005)

        threading.Thread(target=kill_when_writing, daemon=True).start()


class PoisonMarkedSamplesHook(Hook):
    """Makes the embeddings of every row that contains ``token_id`` NaN, as a corrupt sample
    or an overflowing layer would: the loss of any batch holding such a row is NaN."""

    def __init__(self, token_id):
        self.token_id = token_id

    def before_train(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        embeddings = model.llm.get_input_embeddings()

        def poison(module, inputs, output):
            marked = (inputs[0] == self.token_id).any(dim=-1)
            if bool(marked.any()):
                output = output.clone()
                output[marked] = float('nan')
            return output

        embeddings.register_forward_hook(poison)


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory, tiny_llama_dir, shared_data):
    """An uninterrupted run of the reference schedule: (config, work dir, {iteration: loss}).
    Test modules import this fixture, so pytest sees one copy per module; the run itself
    happens once per session (a finished run in the session's temp folder is reused)."""
    folder = tmp_path_factory.getbasetemp() / 'reference'
    config, work_dir = folder / 'reference.py', folder / 'run'
    if not (work_dir / 'iter_12.pth').is_file():
        folder.mkdir(exist_ok=True)
        write_config(folder, tiny_llama_dir, shared_data / 'alpaca' / 'alpaca_data_subset.json', 'reference')
        run_train(config, '--work-dir', work_dir, '--cfg-options', *REFERENCE_OPTIONS)
    losses = logged_losses(work_dir)
    assert sorted(losses) == list(range(1, 13))
    return config, work_dir, losses


def assert_same_curve(resumed: dict, reference: dict, iterations) -> None:
    for iteration in iterations:
        assert resumed[iteration] == pytest.approx(reference[iteration], abs=1e-6), (
            f'iteration {iteration}: resumed {resumed[iteration]} vs uninterrupted {reference[iteration]}')
