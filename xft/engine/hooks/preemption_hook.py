"""SIGTERM (preemption, ``scancel``, ``kill``) and SIGINT (Ctrl-C) save a checkpoint and stop.

The signal handler only takes note; the iteration in flight finishes, then every rank saves
the same step (ranks agree through one all-reduce per iteration, since torchrun forwards the
signal to each of them at slightly different moments) and the loop ends. ``xft train`` then
exits with 128 + the signal number and one line naming the checkpoint to resume from.
A second Ctrl-C interrupts at once, without saving.
"""
import signal

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionHook(Hook):
    """Turns SIGTERM/SIGINT into "save a checkpoint after this iteration, then stop".

    ``stopped_by`` holds ``(signal name, iteration, checkpoint path)`` once it has done so.
    """

    # After CheckpointHook (VERY_LOW = 90), so an iteration that saves anyway is not saved twice.
    priority = 'LOWEST'

    def __init__(self, signals=STOP_SIGNALS):
        self._signals = tuple(signals)
        self._previous = {}
        self._received = 0
        self.stopped_by = None

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._received:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self._received = signum

    def before_train(self, runner) -> None:
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def after_train(self, runner) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _agreed_signal(self) -> int:
        if get_world_size() == 1:
            return self._received
        received = torch.tensor([self._received], dtype=torch.int64)
        all_reduce(received, op='max')
        return int(received.item())

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        signum = self._agreed_signal()
        if not signum:
            return
        name = signal.Signals(signum).name
        step = runner.iter + 1
        print_log(f'{name} received: saving a checkpoint at iteration {step} and stopping', logger='current')
        checkpoint_hook = next((hook for hook in runner.hooks if hasattr(hook, 'save_now')), None)
        if checkpoint_hook is None:
            raise RuntimeError('PreemptionHook needs SafeCheckpointHook in default_hooks.checkpoint')
        path = checkpoint_hook.save_now(runner)
        runner.train_loop.stop_training = True
        self.stopped_by = (name, step, path)
        print_log(f'{name}: stopped after iteration {step}; checkpoint {path}', logger='current')
