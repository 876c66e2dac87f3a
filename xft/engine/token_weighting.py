"""The loss of an optimizer step: the mean over every trained token of the whole step.

A model returns the mean loss of its micro-batch. mmengine then divides each micro-batch's
loss by ``accumulative_counts`` and DDP averages the ranks' gradients, so a step with
gradient accumulation or several ranks averages per-micro-batch means: a 10-token answer
weighs as much as a 500-token one, and batch 2 is not the same as 2 micro-batches of 1.
(Transformers, TRL and torchtune fixed this in 2024.)

Here the step's trained tokens are counted before its first backward: ``StepWindows`` fetches
the micro-batches of an accumulation window when the first of them is asked for, counts
their trained tokens (labels other than IGNORE_INDEX, after the shift) and sums the count
over the ranks. ``TokenWeightedOptimWrapper`` then back-propagates each micro-batch's mean
times ``n_micro_batch * ranks / n_step``: with the ranks' gradients averaged (1/ranks: torch's
DDP, xft's ``StepDataParallel`` and ZeRO all average) and no 1/accumulative_counts, the step's
gradient is the sum of all its token losses over ``n_step``. The logged loss is unchanged: each micro-batch's own per-token mean.

Under sequence parallelism the ``sp`` ranks of a group hold the same rows, so counts are
summed over the data-parallel ranks only (each row once) and ``ranks`` is the data-parallel
size; the model's loss already makes the group's ``sp`` gradients average to the row's
(``xft.parallel.sequence.loss``), so DDP's average over all ranks is one over rows again.

Packing, padding and ``-100`` labels need nothing special (only labels are counted), a last
window shorter than ``accumulative_counts`` counts its own micro-batches, and the model's
loss function (plain or the fast path's chunked one) only ever sees its own micro-batch.
"""
import dataclasses
from typing import List, Optional

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.optim import OptimWrapper

from xft.model.loss import count_trained_tokens
from xft.parallel.sequence import get_data_parallel_group
from xft.utils.errors import ConfigError

# train_cfg.loss_normalization: 'step_tokens' is the default; 'micro_batch' is XTuner 0.1.x's
# (and mmengine's) mean of per-micro-batch means, kept to reproduce old curves.
LOSS_NORMALIZATIONS = ('step_tokens', 'micro_batch')


def batch_trained_tokens(data_batch) -> int:
    """Trained tokens of one collated micro-batch (``{'data': {'labels': ...}, ...}``)."""
    data = data_batch.get('data', data_batch) if isinstance(data_batch, dict) else None
    labels = data.get('labels') if isinstance(data, dict) else None
    if not isinstance(labels, torch.Tensor):
        raise ConfigError("train_cfg.loss_normalization='step_tokens' needs batches with a `labels` "
                          "tensor (default_collate_fn's); use loss_normalization='micro_batch'")
    return count_trained_tokens(labels)


def loss_units_counter(model):
    """The function that counts what ``model``'s micro-batch loss averages over: its
    ``count_loss_units`` where it has one, else the trained tokens."""
    model = getattr(model, 'module', model)  # a DDP-style wrapper
    return getattr(model, 'count_loss_units', None) or batch_trained_tokens


def sum_over_ranks(count: int) -> int:
    """``count`` summed over the data-parallel ranks (every rank without sequence
    parallelism; itself on one process)."""
    if get_world_size() == 1:
        return count
    total = torch.tensor([count], dtype=torch.long)
    all_reduce(total, op='sum', group=get_data_parallel_group())
    return int(total.item())


def _deepspeed_engine(optim_wrapper):
    """The DeepSpeed engine behind mmengine's DeepSpeedOptimWrapper (None for any other)."""
    engine = getattr(optim_wrapper, '_model', None)
    return engine if callable(getattr(engine, 'gradient_accumulation_steps', None)) else None


def accumulation_of(optim_wrapper) -> int:
    """Micro-batches per optimizer step: mmengine's ``accumulative_counts`` or DeepSpeed's
    ``gradient_accumulation_steps``."""
    engine = _deepspeed_engine(optim_wrapper)
    if engine is not None:
        return int(engine.gradient_accumulation_steps())
    return int(getattr(optim_wrapper, '_accumulative_counts', 1))


@dataclasses.dataclass
class MicroBatch:
    """One micro-batch handed to the model, with what its optimizer step needs to know."""
    data: dict
    indices: Optional[List[int]]  # its dataset rows, when the sampler is traceable
    n_tokens: int                 # trained tokens in this micro-batch (this rank)
    step_tokens: int              # trained tokens of its whole optimizer step (all ranks)


class StepWindows:
    """Hands out micro-batches in order, reading each accumulation window ahead.

    Window ``k`` holds iterations ``[k * accumulation, (k + 1) * accumulation)``, the last one
    ending at ``max_iters``: the windows mmengine's OptimWrapper steps at.
    """

    def __init__(self, batches, accumulation: int, max_iters: int, count=None):
        self._batches = batches            # an iterator of batches with ``last_indices``
        # What a micro-batch's loss is the mean over: trained tokens, or a model's own unit
        # (``count_loss_units``: preference models average over pairs).
        self._count = count or batch_trained_tokens
        self._accumulation = max(int(accumulation), 1)
        self._max_iters = max_iters
        self._ahead: List[MicroBatch] = []
        self._done_tokens = 0              # trained tokens of the open window already handed out

    def _window_end(self, iteration: int) -> int:
        start = iteration - iteration % self._accumulation
        return min(start + self._accumulation, self._max_iters)

    def _fetch(self):
        data = next(self._batches)
        return data, getattr(self._batches, 'last_indices', None), self._count(data)

    def skip(self, iterations: int) -> None:
        """Consume the batches a resumed run already trained on, remembering the tokens of the
        open window's finished micro-batches (its saved gradients were weighed with them)."""
        open_window_start = iterations - iterations % self._accumulation
        self._done_tokens = 0
        for iteration in range(iterations):
            _, _, n_tokens = self._fetch()
            if iteration >= open_window_start:
                self._done_tokens += n_tokens

    def next(self, iteration: int) -> MicroBatch:
        if not self._ahead:
            fetched = [self._fetch() for _ in range(self._window_end(iteration) - iteration)]
            step_tokens = sum_over_ranks(self._done_tokens + sum(n for _, _, n in fetched))
            self._ahead = [MicroBatch(data, indices, n, step_tokens) for data, indices, n in fetched]
            self._done_tokens = 0
        return self._ahead.pop(0)


class TokenWeightedOptimWrapper:
    """Stands in front of an optimizer wrapper; weighs each micro-batch's mean loss by its
    share of the step's trained tokens (see the module doc). Everything else is delegated.

    >>> weight = torch.nn.Parameter(torch.zeros(1))
    >>> wrapper = TokenWeightedOptimWrapper(OptimWrapper(torch.optim.SGD([weight], lr=1.0),
    ...                                                  accumulative_counts=2), ranks=1)
    >>> for n_tokens, mean in ((1, 4.0), (3, 8.0)):  # token sums 4 and 24 over 4 tokens
    ...     wrapper.set_micro_batch(n_tokens, step_tokens=4)
    ...     wrapper.update_params(weight * mean)
    >>> weight.item()  # -(4 + 24) / 4; the mean of means would give -(4 + 8) / 2
    -7.0
    """

    def __init__(self, optim_wrapper, ranks: int):
        if not isinstance(optim_wrapper, OptimWrapper) and _deepspeed_engine(optim_wrapper) is None:
            raise ConfigError(f"train_cfg.loss_normalization='step_tokens' does not know the optimizer "
                              f"wrapper {type(optim_wrapper).__name__}; use loss_normalization='micro_batch'")
        self._wrapper = optim_wrapper
        self._ranks = ranks
        self._weight = None

    def __getattr__(self, name):
        return getattr(self._wrapper, name)

    def set_micro_batch(self, n_tokens: int, step_tokens: int) -> None:
        # Gradients averaged over `ranks` (DDP, StepDataParallel, ZeRO): scaling by `ranks`
        # turns that into a sum.
        self._weight = n_tokens * self._ranks / max(step_tokens, 1)

    def update_params(self, loss, step_kwargs=None, zero_kwargs=None) -> None:
        if self._weight is None:
            raise RuntimeError('TokenWeightedOptimWrapper.update_params before set_micro_batch')
        weighted, self._weight = loss * self._weight, None
        engine = _deepspeed_engine(self._wrapper)
        if engine is not None:
            # DeepSpeed divides every micro-batch's loss by its accumulation steps itself.
            self._wrapper.update_params(weighted * engine.gradient_accumulation_steps())
            return
        # mmengine's update_params without its 1/accumulative_counts (scale_loss).
        self._wrapper.backward(weighted)
        if self._wrapper.should_update():
            self._wrapper.step(**(step_kwargs or {}))
            self._wrapper.zero_grad(**(zero_kwargs or {}))
