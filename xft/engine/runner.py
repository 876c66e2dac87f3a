"""The training loop configs name as ``train_cfg = dict(type=TrainLoop, max_epochs=...)``."""
import collections
import logging

import torch
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import IterBasedTrainLoop

from xft.engine.schedulers import drop_empty_schedulers
from xft.engine.nonfinite import NONFINITE_POLICIES, FiniteLossGuard, NonFiniteLossError
from xft.engine.token_weighting import (LOSS_NORMALIZATIONS, StepWindows, TokenWeightedOptimWrapper,
                                        accumulation_of, loss_units_counter)
from xft.parallel.sequence import (check_sequence_parallel_size, get_data_parallel_world_size,
                                   sequence_parallel_size_of)
from xft.utils.errors import ConfigError

# The custom hook point called once a resumed run's dataloader stands where the saved run
# stood, right before the first resumed iteration fetches its batch (see ExactResumeHook).
RESUMED_HOOK_POINT = 'after_dataloader_advanced'


class _RecordingSampler:
    """Passes a sampler's indices through and remembers them, so that each batch can be
    traced back to its dataset rows (batches come out of a DataLoader in sampling order)."""

    def __init__(self, sampler, sampled: collections.deque):
        self._sampler = sampler
        self._sampled = sampled

    def __iter__(self):
        for index in self._sampler:
            self._sampled.append(int(index))
            yield index

    def __len__(self):
        return len(self._sampler)

    def __getattr__(self, name):
        return getattr(self._sampler, name)


def _batch_rows(batch) -> int:
    data = batch.get('data', batch) if isinstance(batch, dict) else None
    input_ids = data.get('input_ids') if isinstance(data, dict) else None
    return int(input_ids.shape[0]) if isinstance(input_ids, torch.Tensor) else -1


class _EndlessBatches:
    """Batches from a dataloader forever, starting a new epoch when one ends.

    mmengine's own iterator sleeps 2 s at every epoch wrap; small data sets wrap often,
    so we restart the iterator without sleeping. The sampler's epoch is advanced first so
    that a shuffling sampler draws a new order each epoch, exactly as mmengine does.
    ``last_indices`` holds the dataset rows of the batch returned last (None if unknown).
    """

    def __init__(self, dataloader):
        self._dataloader = dataloader
        self._epoch = 0
        self._sampled = collections.deque()
        self.last_indices = None
        batch_sampler = getattr(dataloader, 'batch_sampler', None)
        self._tracing = batch_sampler is not None and hasattr(batch_sampler, 'sampler')
        if self._tracing and not isinstance(batch_sampler.sampler, _RecordingSampler):
            batch_sampler.sampler = _RecordingSampler(batch_sampler.sampler, self._sampled)
        elif self._tracing:
            self._sampled = batch_sampler.sampler._sampled
        self._iterator = iter(dataloader)

    def _set_sampler_epoch(self):
        sampler = getattr(self._dataloader, 'sampler', None)
        if not hasattr(sampler, 'set_epoch'):
            sampler = getattr(getattr(self._dataloader, 'batch_sampler', None), 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(self._epoch)

    def __iter__(self):
        return self

    def _next_batch(self):
        try:
            return next(self._iterator)
        except StopIteration:
            self._epoch += 1
            self._set_sampler_epoch()
            self._iterator = iter(self._dataloader)
            return next(self._iterator)

    def __next__(self):
        batch = self._next_batch()
        rows = _batch_rows(batch)
        if self._tracing and 0 <= rows <= len(self._sampled):
            self.last_indices = [self._sampled.popleft() for _ in range(rows)]
        else:
            self.last_indices = None
        return batch


def _slice_rows(data: dict, rows: list) -> dict:
    """The rows ``rows`` of a collated batch: tensors and lists cut along their first axis."""
    size = int(data['input_ids'].shape[0])
    picked = {}
    for key, value in data.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
            picked[key] = value[rows]
        elif isinstance(value, list) and len(value) == size:
            picked[key] = [value[row] for row in rows]
        else:
            picked[key] = value
    return picked


def _check_sequence_parallel(runner) -> None:
    """A config's sequence_parallel_size needs its groups (set up by `xft train`) and a model
    that splits rows (SupervisedFinetune); refused in one line otherwise."""
    size = sequence_parallel_size_of(getattr(runner, 'cfg', None) or {})
    check_sequence_parallel_size(size)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    if size > 1 and isinstance(model, torch.nn.Module) and getattr(model, 'sequence_parallel_size', 1) != size:
        raise ConfigError(f'sequence_parallel_size={size}: the model ({type(model).__name__}) does not split '
                          'rows over the sequence-parallel group; SupervisedFinetune does')


class TrainLoop(IterBasedTrainLoop):
    """Iteration-based training that also accepts ``max_epochs`` (XTuner's TrainLoop).

    ``max_epochs`` becomes ``max_epochs * len(dataloader)`` iterations, so checkpoints,
    logging and schedulers count iterations whichever way the config is written.
    ``nonfinite_loss`` says what a NaN/inf loss does: ``'stop'`` (default) or ``'skip'``
    (drop its accumulation window); see ``xft.engine.nonfinite``.
    ``loss_normalization`` says what an optimizer step's loss is: ``'step_tokens'`` (default)
    the mean over every trained token of the step, across gradient accumulation and ranks
    (``xft.engine.token_weighting``); ``'micro_batch'`` the mean of per-micro-batch means
    (XTuner 0.1.x, to reproduce its curves).

    Example: ``train_cfg = dict(type=TrainLoop, max_epochs=3, nonfinite_loss='skip')``
    """

    def __init__(self, runner, dataloader, max_iters=None, max_epochs=None, nonfinite_loss='stop',
                 loss_normalization='step_tokens', **kwargs):
        if (max_iters is None) == (max_epochs is None):
            raise ConfigError('train_cfg: give exactly one of max_iters or max_epochs')
        if nonfinite_loss not in NONFINITE_POLICIES:
            raise ConfigError(f'train_cfg.nonfinite_loss: expected one of {", ".join(NONFINITE_POLICIES)}, '
                              f'got {nonfinite_loss!r}')
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ConfigError(f'train_cfg.loss_normalization: expected one of {", ".join(LOSS_NORMALIZATIONS)}, '
                              f'got {loss_normalization!r}')
        # XTuner's configs declare it in PART 1; `xft train` sets its groups up before the model.
        _check_sequence_parallel(runner)
        if max_epochs is not None:
            runner_dataloader = runner.build_dataloader(dataloader) if isinstance(dataloader, dict) else dataloader
            iters_per_epoch = len(runner_dataloader)
            if iters_per_epoch == 0:
                raise ConfigError('train_dataloader: the dataset is empty, nothing to train on')
            max_iters = int(max_epochs * iters_per_epoch)
            print_log(f'TrainLoop: {max_epochs} epoch(s) of {iters_per_epoch} iterations = {max_iters} iterations',
                      logger='current')
            dataloader = runner_dataloader
        super().__init__(runner=runner, dataloader=dataloader, max_iters=max_iters, **kwargs)
        drop_empty_schedulers(runner.param_schedulers, len(self.dataloader))
        self.nonfinite_loss = nonfinite_loss
        self.loss_normalization = loss_normalization
        self.dataloader_iterator = _EndlessBatches(self.dataloader)
        self._guard = None
        self._guarded = None
        self._weighting = None
        self._windows = None  # built in run(): the window size comes from the optimizer wrapper
        self._micro_batch = None

    def run(self):
        """mmengine's iteration loop, plus a hook point once a resumed run's data is advanced."""
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        self._windows = StepWindows(self.dataloader_iterator, accumulation_of(self.runner.optim_wrapper),
                                    self._max_iters, count=loss_units_counter(self.runner.model))
        if self._iter > 0:
            print_log(f'Resuming at iteration {self._iter} of {self._max_iters}: advancing the dataloader '
                      f'past the {self._iter} batches already trained on', logger='current')
            self._windows.skip(self._iter)
            self.runner.call_hook(RESUMED_HOOK_POINT)
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self._micro_batch = self._windows.next(self._iter)
            self.run_iter(self._micro_batch.data)
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):
                self.runner.val_loop.run()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model

    def _loss_guard(self) -> FiniteLossGuard:
        """The optimizer wrapper train_step gets: the NaN guard, in front of the token weighting
        (with 'step_tokens'), in front of the runner's wrapper."""
        wrapper = self.runner.optim_wrapper
        if self._guard is None or self._guarded is not wrapper:
            if self.nonfinite_loss == 'skip' and not hasattr(wrapper, 'should_update'):
                raise ConfigError("train_cfg.nonfinite_loss='skip' needs mmengine's OptimWrapper; under "
                                  "DeepSpeed use 'stop' (DeepSpeed steps by itself)")
            self._guarded = wrapper
            self._weighting = None
            if self.loss_normalization == 'step_tokens':
                # Under DDP or ZeRO the ranks' gradients are averaged; elsewhere there is one rank.
                # The ranks of a sequence-parallel group share rows: count each row once.
                ranks = get_data_parallel_world_size() if is_model_wrapper(self.runner.model) else 1
                self._weighting = wrapper = TokenWeightedOptimWrapper(wrapper, ranks)
            self._guard = FiniteLossGuard(wrapper, self._bare_model().parameters(), self.nonfinite_loss)
        return self._guard

    def _bare_model(self):
        return self.runner.model.module if is_model_wrapper(self.runner.model) else self.runner.model

    def run_iter(self, data_batch) -> None:
        self.runner.call_hook('before_train_iter', batch_idx=self._iter, data_batch=data_batch)
        guard = self._loss_guard()
        if self._weighting is not None:
            micro_batch = self._micro_batch
            if micro_batch is None or micro_batch.data is not data_batch:
                raise RuntimeError('TrainLoop.run_iter: batch not handed out by the loop; its step '
                                   'token count is unknown')
            self._weighting.set_micro_batch(micro_batch.n_tokens, micro_batch.step_tokens)
        skipped = guard.skipped_windows
        try:
            outputs = self.runner.model.train_step(data_batch, optim_wrapper=guard)
        except NonFiniteLossError as error:
            raise NonFiniteLossError(self._describe_nonfinite(error.value, data_batch)) from None
        if guard.skipped_windows != skipped:
            print_log(f'{self._describe_nonfinite(guard.last_value, data_batch)}; '
                      'skipping its accumulation window (train_cfg.nonfinite_loss="skip")',
                      logger='current', level=logging.WARNING)
        self.runner.call_hook('after_train_iter', batch_idx=self._iter, data_batch=data_batch, outputs=outputs)
        self._iter += 1

    def _describe_nonfinite(self, value, data_batch) -> str:
        """'iteration 7: loss is nan; dataset rows [12] (of batch rows [12, 40]) give it'."""
        where = f'iteration {self._iter + 1}: loss is {value}'
        # The loop reads a window's batches ahead: the iterator's last indices may be later ones.
        indices = self._micro_batch.indices if self._micro_batch is not None else None
        bad_rows = self._nonfinite_rows(data_batch)
        if indices is None:
            rows = 'all' if bad_rows is None else bad_rows
            return f'{where}; batch rows {rows} give it (dataset indices unknown for this sampler)'
        if bad_rows is None or not bad_rows:
            return f'{where}; it comes from the batch of dataset rows {indices}'
        return f'{where}; dataset rows {[indices[row] for row in bad_rows]} give it (batch of rows {indices})'

    @torch.no_grad()
    def _nonfinite_rows(self, data_batch):
        """Batch positions whose loss alone is not finite (one forward per row), or None."""
        model = self._bare_model()
        try:
            data = data_batch['data']
            bad = []
            for row in range(int(data['input_ids'].shape[0])):
                one = model.data_preprocessor({'data': _slice_rows(data, [row]), 'data_samples': None}, True)
                loss = model(one['data'], mode='loss')['loss']
                if not bool(torch.isfinite(loss).all()):
                    bad.append(row)
            return bad
        except (KeyError, TypeError, AttributeError, RuntimeError, ValueError):
            return None
