"""Guarding the optimizer against a NaN or infinite loss.

A non-finite loss, back-propagated, turns every weight it reaches into NaN, and the run goes
on training on garbage. :class:`FiniteLossGuard` stands in front of the optimizer wrapper and
checks the loss before the backward pass, so nothing is updated from it:

- ``'stop'`` (the default): training stops with :class:`NonFiniteLossError`, naming the
  iteration and the dataset rows of the batch that produced the loss;
- ``'skip'``: the whole accumulation window it falls in is dropped (no optimizer step), a
  warning names the rows, and training goes on.

Under DDP the ranks agree first (one tiny all-reduce per iteration), because a rank that
skipped its backward alone would leave the others waiting for its gradients.
"""
import math

import torch
from mmengine.dist import all_reduce, get_world_size

from xft.utils.errors import UserError

NONFINITE_POLICIES = ('stop', 'skip')


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; training stopped before the optimizer step.

    The guard raises it with the value alone ('loss is nan', ``value`` set); TrainLoop raises it
    again with the iteration and the dataset rows that gave the loss, the line the user reads.
    """

    def __init__(self, message, value: float = None):
        super().__init__(message)
        self.value = value


def loss_is_finite_on_every_rank(loss: torch.Tensor) -> bool:
    bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0])
    if get_world_size() > 1:
        all_reduce(bad, op='max')
    return bad.item() == 0.0


def zero_loss(parameters) -> torch.Tensor:
    """A loss whose gradient is zero for every trainable parameter. Back-propagating it keeps
    the accumulation count and DDP's gradient hooks in step without moving anything."""
    return sum((param.sum() * 0.0 for param in parameters if param.requires_grad), torch.zeros(()))


class FiniteLossGuard:
    """An optimizer wrapper that refuses non-finite losses; everything else is delegated.

    >>> import torch
    >>> from mmengine.optim import OptimWrapper
    >>> weight = torch.nn.Parameter(torch.ones(2))
    >>> guard = FiniteLossGuard(OptimWrapper(torch.optim.SGD([weight], lr=1.0)), [weight], 'skip')
    >>> guard.update_params((weight * float('nan')).sum())
    >>> weight.tolist(), guard.skipped_windows
    ([1.0, 1.0], 1)
    """

    def __init__(self, optim_wrapper, parameters, policy: str = 'stop'):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f'policy must be one of {NONFINITE_POLICIES}, got {policy!r}')
        self._wrapper = optim_wrapper
        self._parameters = list(parameters)
        self._policy = policy
        self._window_poisoned = False
        self.skipped_windows = 0
        self.last_value = None

    def __getattr__(self, name):
        return getattr(self._wrapper, name)

    def update_params(self, loss, **kwargs) -> None:
        finite = loss_is_finite_on_every_rank(loss)
        if not finite:
            self.last_value = float(loss.detach().float()) if loss.numel() == 1 else math.nan
            if self._policy == 'stop':
                raise NonFiniteLossError(f'loss is {self.last_value}', self.last_value)
            if not self._window_poisoned:
                self.skipped_windows += 1
            self._window_poisoned = True
        if not self._window_poisoned:
            self._wrapper.update_params(loss, **kwargs)
            return
        # Inside a poisoned window: keep counting micro-batches (and DDP's hooks firing) with
        # zero gradients, and at the window's end throw its gradients away instead of stepping.
        safe_loss = loss if finite else zero_loss(self._parameters).to(loss.device)
        self._wrapper.backward(self._wrapper.scale_loss(safe_loss))
        if self._wrapper.should_update():
            self._wrapper.zero_grad()
            self._window_poisoned = False
