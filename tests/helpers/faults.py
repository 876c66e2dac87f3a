"""Test-only hooks that inject real faults into a training run, and the reference schedule the
fault and exact-resume tests compare against.

The hooks run inside the training process: a config written by
``helpers.training.write_tiny_config(..., hooks=[...])`` imports them from this module (a
subprocess gets ``tests/`` on its ``PYTHONPATH``). They inject a signal sent to the training
process itself, a SIGKILL while a checkpoint is being written, NaN embeddings for marked samples.
"""
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook

from helpers.paths import ALPACA_SUBSET
from helpers.training import logged_losses, train_in_process, write_tiny_config

# The reference schedule: one sample per micro-batch, two micro-batches per optimizer step,
# LoRA dropout on (so the random generators matter), a constant learning rate (so that 2
# processes x 1 micro-batch and 1 process x 2 micro-batches see the same one at each step),
# checkpoints every 5 iterations (5 is inside an accumulation window), and each iteration's
# own loss in the log (mmengine logs a 10-iteration moving mean by default).
REFERENCE_OPTIONS = ('train_dataloader.batch_size=1', 'optim_wrapper.accumulative_counts=2',
                     'model.lora.lora_dropout=0.1', 'param_scheduler.0.start_factor=1.0',
                     'train_cfg.max_iters=12', 'default_hooks.checkpoint.interval=5',
                     'train_dataloader.dataset.max_dataset_length=24', 'log_processor.window_size=1')


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


def reference_run(folder, model_dir):
    """An uninterrupted run of the reference schedule in ``folder``: (config, work dir,
    {iteration: loss}). The session fixture ``reference_run`` (tests/conftest.py) runs it once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = write_tiny_config(folder, model_dir, ALPACA_SUBSET, name='reference')
    work_dir = folder / 'run'
    train_in_process(config, '--work-dir', work_dir, '--cfg-options', *REFERENCE_OPTIONS)
    losses = logged_losses(work_dir)
    assert sorted(losses) == list(range(1, 13))
    return config, work_dir, losses


def assert_same_curve(resumed: dict, reference: dict, iterations) -> None:
    for iteration in iterations:
        assert resumed[iteration] == pytest.approx(reference[iteration], abs=1e-6), (
            f'iteration {iteration}: resumed {resumed[iteration]} vs uninterrupted {reference[iteration]}')
