"""SIGTERM (preemption, ``scancel``, ``kill``) and SIGINT (Ctrl-C) save a checkpoint and stop, fast.

The signal handler takes note; the iteration in flight finishes, then every rank saves the same
step (ranks agree through one all-reduce per iteration, since torchrun forwards the signal to
each of them at slightly different moments) and the loop ends. ``xft train`` then exits with
128 + the signal number and one line naming the checkpoint to resume from. A second Ctrl-C
interrupts at once, without saving.

A stopping run has a grace period to keep (a scheduler's SIGKILL follows its SIGTERM), so it does
nothing that can wait: work that another hook marks ``interruptible_by_stop`` (generating the
answers of an evaluation, minutes on a CPU) is abandoned the moment the signal arrives, and hooks
ask ``stop_requested(runner)`` to skip what they would do after training (the final evaluation,
the loss-curve plot, which ``xft plot-log`` draws later).
"""
import contextlib
import signal

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """Raised inside ``interruptible_by_stop`` work when a stop signal arrives."""


class PreemptionHook(Hook):
    """Turns SIGTERM/SIGINT into "save a checkpoint after this iteration, then stop".

    ``stopped_by`` holds ``(signal name, iteration, checkpoint path or None)`` once it has done
    so (None: the signal came before the first iteration, nothing new to save).
    """

    # After CheckpointHook (VERY_LOW = 90), so an iteration that saves anyway is not saved twice.
    priority = 'LOWEST'

    def __init__(self, signals=STOP_SIGNALS):
        self._signals = tuple(signals)
        self._previous = {}
        self._received = 0
        self._interruptible = False
        self.stopped_by = None

    @property
    def received(self) -> int:
        """The signal number received on this rank (0: none)."""
        return self._received

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._received:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self._received = signum
        if self._interruptible:
            self._interruptible = False
            raise StopRequested(signal.Signals(signum).name)

    @contextlib.contextmanager
    def interruptible(self):
        """Work a stop signal abandons: raises StopRequested at once when one arrives (or has)."""
        if self._received:
            raise StopRequested(signal.Signals(self._received).name)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    # Installed before the first hook runs (evaluations before training may take minutes).
    def before_run(self, runner) -> None:
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def after_run(self, runner) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def before_train(self, runner) -> None:
        """A signal during the hooks before training (an evaluation) stops before iteration 1."""
        signum = self._agreed_signal()
        if not signum:
            return
        name = signal.Signals(signum).name
        runner.train_loop.stop_training = True
        self.stopped_by = (name, runner.iter, None)
        print_log(f'{name} received before iteration {runner.iter + 1}: stopping; nothing new '
                  'to save', logger='current')

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


def _stop_hook(runner):
    return next((hook for hook in runner.hooks if isinstance(hook, PreemptionHook)), None)


def stop_requested(runner) -> bool:
    """True once a stop signal reached this run: skip whatever can wait."""
    hook = _stop_hook(runner)
    return bool(hook is not None and hook.received)


@contextlib.contextmanager
def interruptible_by_stop(runner):
    """Run the block so that a stop signal abandons it (StopRequested) instead of waiting for it.
    Without a PreemptionHook (a Runner not started by ``xft train``) the block just runs."""
    hook = _stop_hook(runner)
    if hook is None:
        yield
        return
    with hook.interruptible():
        yield
