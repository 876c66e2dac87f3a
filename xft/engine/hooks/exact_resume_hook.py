"""Checkpoints from which a resumed run reproduces the uninterrupted one.

mmengine restores weights, optimizer, schedulers and the data position. This hook adds what
it leaves out, and says in the log what was resumed from where:

- the random generators of every rank (python, numpy, torch), restored after the dataloader
  has been advanced, i.e. exactly where the uninterrupted run was when it saved;
- the gradients of an unfinished accumulation window (a save at iteration 10 with
  ``accumulative_counts=4`` holds the gradients of iterations 9 and 10). Under DDP each rank
  holds its own partial sum; they are averaged across ranks before saving, which gives the
  same update because DDP averages the window's total at its end anyway;
- the message hub in plain types, so the checkpoint loads without unpickling objects;
- the number of processes: a resume with another count is refused in one line
  (``xft.engine.data_parallel.refuse_other_world_size`` says why).

``xft train`` registers it on every run. It relies on ``SafeCheckpointHook`` (which calls
``before_save_checkpoint_all_ranks``) and on ``TrainLoop`` (``after_dataloader_advanced``).
"""
from mmengine.dist import all_gather_object, all_reduce, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import find_latest_checkpoint

from xft.engine.data_parallel import refuse_other_world_size
from xft.engine.resume_state import (capture_rng, message_hub_from_plain, pending_gradients,
                                     plain_message_hub, restore_gradients, restore_rng)

STATE_KEY = 'xft_resume_state'


def _bare_model(runner):
    return runner.model.module if is_model_wrapper(runner.model) else runner.model


def _resumed_file(runner) -> str:
    """The checkpoint a resume loads: ``--resume PATH``'s, or the work dir's newest (``auto``)."""
    return runner._load_from or find_latest_checkpoint(runner.work_dir) or 'the checkpoint'


def _accumulation(runner):
    """(micro-batches done in the current window, window size), or None where the optimizer
    wrapper keeps its own count (DeepSpeed)."""
    wrapper = runner.optim_wrapper
    if not hasattr(wrapper, '_inner_count') or not hasattr(wrapper, '_accumulative_counts'):
        return None
    return wrapper._inner_count % wrapper._accumulative_counts, wrapper._accumulative_counts


class ExactResumeHook(Hook):
    """Saves and restores RNG states and partial gradient accumulation (see the module doc)."""

    # After mmengine's own hooks have written their parts of the checkpoint (VERY_LOW = 90).
    priority = 'VERY_LOW'

    def __init__(self):
        self._gathered = None
        self._pending = None
        self._resumed_from = None

    def before_save_checkpoint_all_ranks(self, runner) -> None:
        """Collective part of a save (every rank): RNG states of all ranks, averaged partial grads."""
        rng_states = all_gather_object(capture_rng()) if get_world_size() > 1 else [capture_rng()]
        accumulation = _accumulation(runner)
        gradients = {}
        if accumulation is not None and accumulation[0] != 0:
            model = _bare_model(runner)
            if get_world_size() > 1:
                for param in model.parameters():
                    if param.requires_grad and param.grad is not None:
                        all_reduce(param.grad, op='mean')
            gradients = pending_gradients(model)
        self._gathered = {'rng': rng_states, 'world_size': get_world_size(),
                          'window_position': accumulation[0] if accumulation else 0,
                          'window_size': accumulation[1] if accumulation else 1, 'gradients': gradients}

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['message_hub'] = plain_message_hub(checkpoint['message_hub'])
        if self._gathered is not None:
            checkpoint[STATE_KEY] = self._gathered
            self._gathered = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'message_hub' in checkpoint:
            checkpoint['message_hub'] = message_hub_from_plain(checkpoint['message_hub'])
            self._resumed_from = checkpoint['message_hub'].get('runtime_info', {}).get('last_ckpt')
        self._pending = checkpoint.pop(STATE_KEY, None)
        if self._pending is not None and getattr(runner, '_resume', False):  # not for load_from
            saved = self._pending.get('world_size', len(self._pending['rng']))
            refuse_other_world_size(saved, get_world_size(), _resumed_file(runner))

    def after_dataloader_advanced(self, runner) -> None:
        """Called by TrainLoop once the dataloader stands where the saved run stood."""
        if runner.iter == 0:
            return
        done = [f'resumed from {self._resumed_from or "a checkpoint"} at iteration {runner.iter} '
                f'of {runner.max_iters}: weights, optimizer, schedulers, data position']
        state, self._pending = self._pending, None
        if state is None:
            print_log(f'{done[0]} (no RNG or accumulation state in this checkpoint: an older format, plain '
                      "mmengine, or DeepSpeed's own checkpoint)",
                      logger='current')
            return
        rng_states = state['rng']
        rank = get_rank()
        restore_rng(rng_states[rank] if rank < len(rng_states) else rng_states[0])
        done.append('random generators' if len(rng_states) == get_world_size()
                    else f'random generators (saved by {len(rng_states)} ranks, now {get_world_size()})')
        if state['window_position']:
            restored = restore_gradients(_bare_model(runner), state['gradients'])
            done.append(f'the gradients of {state["window_position"]} of {state["window_size"]} micro-batches '
                        f'of the open accumulation window ({restored} tensors)')
        print_log('; '.join(done), logger='current')
