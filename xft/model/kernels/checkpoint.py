"""Activation checkpointing of whole decoder layers, optionally parking the saved input on the CPU.

Each checkpointed layer keeps only its input hidden states (tokens x hidden) between forward
and backward and recomputes the rest. At 8k tokens those inputs are 2 GiB for a 32-layer 7B
model; `offload=True` copies them to pinned host memory on a side stream and back when the
layer's backward starts, so device memory holds one layer's worth at a time.

A `LayerCheckpointer` instance is what a transformers `GradientCheckpointingLayer` calls as
its `_gradient_checkpointing_func(fn, *args)`; `xft.model.fast_path` sets it per layer.
"""
from typing import Dict, List, Tuple

import torch


class _HostBufferPool:
    """Pinned host buffers reused across steps: pinning is slow, so each step reuses the
    previous step's buffers once the device copies that read them have finished."""

    def __init__(self):
        self._free: Dict[Tuple, List[torch.Tensor]] = {}
        self._pending: List[Tuple[torch.cuda.Event, torch.Tensor]] = []

    def take(self, like: torch.Tensor) -> torch.Tensor:
        still_pending = []
        for event, buf in self._pending:
            if event.query():
                self._free.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)
            else:
                still_pending.append((event, buf))
        self._pending = still_pending
        bucket = self._free.get((tuple(like.shape), like.dtype))
        if bucket:
            return bucket.pop()
        return torch.empty(like.shape, dtype=like.dtype, pin_memory=True)

    def give_after(self, event: torch.cuda.Event, buf: torch.Tensor) -> None:
        self._pending.append((event, buf))


class LayerCheckpointer:
    """Callable `checkpointer(fn, hidden, *args)` that recomputes `fn` in backward.

    `hidden` (the first positional argument) must be the only input that needs a gradient:
    that holds for a decoder layer, whose other inputs (masks, rotary tables) are constants;
    parameters used inside `fn` get their grads from the recomputation.
    With `offload=True` and a CUDA `hidden`, the saved input lives in pinned host memory.

    >>> layer = torch.nn.Linear(4, 4)
    >>> x = torch.randn(3, 4, requires_grad=True)
    >>> LayerCheckpointer()(layer, x).sum().backward()
    >>> x.grad.shape, layer.weight.grad.shape
    (torch.Size([3, 4]), torch.Size([4, 4]))
    """

    def __init__(self, offload: bool = False):
        self.offload = offload
        self._pool = _HostBufferPool()
        self._stream = None

    def __call__(self, fn, hidden, *args):
        if torch.is_grad_enabled() and not hidden.requires_grad:
            # Frozen embeddings give an input without grad; an autograd.Function whose
            # inputs all lack grad would never run backward, and the layer's own
            # parameters (LoRA) would get none. A tiny anchor tensor that needs grad keeps
            # the function on the tape without asking for input grads.
            args = args + (self._anchor(hidden.device), )
        return _Checkpoint.apply(self, fn, len(args), hidden, *args)

    @staticmethod
    def _anchor(device):
        return torch.empty(0, device=device, requires_grad=True)

    def park(self, hidden: torch.Tensor):
        """Keep `hidden` for backward: the tensor itself, or a host copy in flight."""
        if not (self.offload and hidden.is_cuda):
            return hidden.detach()
        if self._stream is None:
            self._stream = torch.cuda.Stream(hidden.device)
        buf = self._pool.take(hidden)
        self._stream.wait_stream(torch.cuda.current_stream(hidden.device))
        with torch.cuda.stream(self._stream):
            buf.copy_(hidden.detach(), non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._stream)
        # The caller may free `hidden` right away; its memory must outlive the copy.
        hidden.record_stream(self._stream)
        return buf, copied, hidden.device

    def unpark(self, parked) -> torch.Tensor:
        if torch.is_tensor(parked):
            return parked
        buf, copied, device = parked
        stream = torch.cuda.current_stream(device)
        stream.wait_event(copied)  # device-side wait: the host copy must be complete
        out = buf.to(device, non_blocking=True)
        back = torch.cuda.Event()
        back.record(stream)
        self._pool.give_after(back, buf)
        return out


def _is_anchor(arg) -> bool:
    return torch.is_tensor(arg) and arg.requires_grad and arg.numel() == 0


def _save_rng(device):
    cuda_state = torch.cuda.get_rng_state(device) if device.type == 'cuda' else None
    return torch.get_rng_state(), cuda_state


def _restore_rng(device, state):
    cpu_state, cuda_state = state
    torch.set_rng_state(cpu_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)


class _Checkpoint(torch.autograd.Function):

    @staticmethod
    def forward(ctx, checkpointer, fn, n_args, hidden, *args):
        ctx.checkpointer = checkpointer
        ctx.fn = fn
        ctx.n_args = n_args
        ctx.args = tuple(a for a in args if not _is_anchor(a))
        device_type = hidden.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type),
                        torch.get_autocast_dtype(device_type))
        ctx.rng = _save_rng(hidden.device)
        ctx.parked = checkpointer.park(hidden)
        with torch.no_grad():
            out = fn(hidden, *ctx.args)
        ctx.out_is_tuple = isinstance(out, tuple)
        return out

    @staticmethod
    def backward(ctx, *grads):
        hidden = ctx.checkpointer.unpark(ctx.parked).detach().requires_grad_(True)
        device_type, autocast_on, autocast_dtype = ctx.autocast
        # Recompute with the forward's random state, so dropout draws the same masks.
        devices = [hidden.device] if hidden.device.type == 'cuda' else []
        with torch.random.fork_rng(devices=devices):
            _restore_rng(hidden.device, ctx.rng)
            with torch.enable_grad(), torch.autocast(device_type, dtype=autocast_dtype,
                                                     enabled=autocast_on):
                out = ctx.fn(hidden, *ctx.args)
        outs = out if ctx.out_is_tuple else (out, )
        pairs = [(o, g) for o, g in zip(outs, grads)
                 if torch.is_tensor(o) and o.requires_grad and g is not None]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        ctx.fn = ctx.args = ctx.parked = None
        grad_hidden = hidden.grad if ctx.needs_input_grad[3] else None
        return (None, None, None, grad_hidden) + (None, ) * ctx.n_args
