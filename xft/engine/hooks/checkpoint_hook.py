"""mmengine's CheckpointHook with crash-safe saving: ``xft train`` uses it wherever a config
names ``CheckpointHook`` (same arguments, same file names).

Three things differ, each because a run of days must survive a kill at any moment:

- the checkpoint is written under a hidden partial name and renamed into place when complete;
- ``last_checkpoint`` (what ``--resume auto`` reads) is replaced atomically, and only after;
- checkpoints beyond ``max_keep_ckpts`` are deleted only after the new one is in place
  (mmengine deletes first, so a failed save with ``max_keep_ckpts=1`` leaves nothing).

A save that fails (a full disk) stops training with :class:`CheckpointSaveError`, whose one
line names the checkpoint that is still good.
"""
from pathlib import Path

from mmengine.dist import barrier, broadcast_object_list, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from xft.engine.faults import (CheckpointSaveError, atomic_write_text, partial_path, publish,
                               remove_partial_checkpoints, remove_path, save_failure_message)

# The custom hook point called on every rank right before a checkpoint is written, for state
# that needs collectives (mmengine's ``before_save_checkpoint`` runs on rank 0 only).
GATHER_HOOK_POINT = 'before_save_checkpoint_all_ranks'


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """CheckpointHook whose saves are atomic; a failed save keeps the last good checkpoint.

    Example (a config's ``default_hooks``; ``xft train`` swaps mmengine's class for this one):
        checkpoint=dict(type=SafeCheckpointHook, by_epoch=False, interval=500, max_keep_ckpts=2)
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process():
            removed = remove_partial_checkpoints(self.out_dir)
            if removed:
                print_log(f'Removed unfinished checkpoint writes left by a killed run: {", ".join(removed)}',
                          logger='current')

    def save_now(self, runner) -> str:
        """Save a checkpoint for the iteration that just ended (unless one exists); its path."""
        step = runner.iter + 1
        if self.last_ckpt is not None and Path(self.last_ckpt).name == self.filename_tmpl.format(step):
            return self.last_ckpt
        self._save_checkpoint_with_step(runner, step, meta=dict(epoch=runner.epoch, iter=step))
        return self.last_ckpt

    def _save_checkpoint_with_step(self, runner, step, meta):
        filename = self.filename_tmpl.format(step)
        final = self.file_backend.join_path(self.out_dir, filename)
        partial = partial_path(final)
        previous = _published_checkpoint(runner.work_dir) or self.last_ckpt

        # The list of kept steps and the checkpoint's own path go into its message hub, so that
        # a resumed run knows which files to rotate out; the files themselves go only after.
        keep_before = list(self.keep_ckpt_ids)
        outdated = self._rotate_keep_ids(runner, step)
        runner.message_hub.update_info('last_ckpt', final)

        runner.call_hook(GATHER_HOOK_POINT)
        error = None
        if is_main_process():
            remove_path(partial)
            try:
                runner.save_checkpoint(self.out_dir, partial.name, self.file_client_args,
                                       save_optimizer=self.save_optimizer,
                                       save_param_scheduler=self.save_param_scheduler,
                                       meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args,
                                       **self.args)
            except OSError as caught:
                error = caught
        elif _strategy_saves_on_every_rank(runner):
            runner.save_checkpoint(self.out_dir, partial.name, self.file_client_args,
                                   save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler,
                                   meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args,
                                   **self.args)
        barrier()
        message = None
        if error is not None:
            remove_path(partial)
            message = save_failure_message(final, error, previous)
        elif is_main_process():
            try:
                publish(partial, final)
                atomic_write_text(Path(runner.work_dir) / 'last_checkpoint', final)
            except OSError as caught:
                remove_path(partial)
                message = save_failure_message(final, caught, previous)
        if get_world_size() > 1:
            shared = [message]
            broadcast_object_list(shared, src=0)
            message = shared[0]
        if message is not None:
            self.keep_ckpt_ids.clear()
            self.keep_ckpt_ids.extend(keep_before)
            runner.message_hub.update_info('keep_ckpt_ids', keep_before)
            runner.message_hub.update_info('last_ckpt', previous)
            raise CheckpointSaveError(message)

        self.last_ckpt = final
        if is_main_process():
            for old_step in outdated:
                remove_path(self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step)))

    def _rotate_keep_ids(self, runner, step) -> list:
        """Record ``step`` among the kept checkpoints; the steps that fall out of the window."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return []
        outdated = []
        while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
            outdated.append(self.keep_ckpt_ids.popleft())
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return outdated


def _published_checkpoint(work_dir):
    """What ``last_checkpoint`` names: the checkpoint ``--resume auto`` would take now."""
    record = Path(work_dir) / 'last_checkpoint'
    return record.read_text().strip() or None if record.is_file() else None


def _strategy_saves_on_every_rank(runner) -> bool:
    """FlexibleRunner's save (DeepSpeed, FSDP) is collective: every rank writes its shard."""
    return hasattr(runner, 'strategy')


def use_safe_checkpoint_hook(cfg) -> None:
    """Swap mmengine's CheckpointHook in ``default_hooks.checkpoint`` for SafeCheckpointHook
    (same arguments); any other checkpoint hook a config names is left as it is."""
    checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint')
    if not checkpoint:
        return
    hook_type = checkpoint.get('type')
    name = hook_type if isinstance(hook_type, str) else getattr(hook_type, '__name__', '')
    if hook_type is CheckpointHook or name in ('CheckpointHook', 'mmengine.hooks.CheckpointHook'):
        # The registry name, not the class: the config is dumped to Python and must stay printable.
        checkpoint['type'] = 'SafeCheckpointHook'
        print_log('default_hooks.checkpoint: CheckpointHook -> SafeCheckpointHook (atomic saves)', logger='current')
