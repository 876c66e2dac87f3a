"""Activation checkpointing of whole decoder layers, optionally parking the saved input on the CPU.

Each checkpointed layer keeps only its input hidden states (tokens x hidden) between forward
and backward and recomputes the rest. At 8k tokens those inputs are 2 GiB for a 32-layer 7B
model; `offload=True` copies them to pinned host memory on a side stream and back when the
layer's backward starts, so device memory holds one layer's worth at a time.

A `LayerCheckpointer` instance is what a transformers `GradientCheckpointingLayer` calls as
its `_gradient_checkpointing_func(fn, *args)`; `xft.model.fast_path` sets it per layer.
"""
from typing import Dict, List, Optional, Tuple

import torch


class _HostBufferPool:
    """Pinned host buffers reused across steps: pinning is slow, so each step reuses the
    previous step's buffers once the device copies that read them have finished."""

    def __init__(self):
        self._free: Dict[Tuple, List[torch.Tensor]] = {}
        self._pending: List[Tuple[torch.cuda.Event, torch.Tensor]] = []
        self.pinned_bytes = 0

    def take(self, like: torch.Tensor, max_bytes: Optional[int] = None) -> Optional[torch.Tensor]:
        """A free pinned buffer shaped like `like`, a new one, or None past `max_bytes`."""
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
        size = like.numel() * like.element_size()
        if max_bytes is not None and self.pinned_bytes + size > max_bytes:
            self._drop_free()  # buffers of other shapes (an earlier length) make room
            if self.pinned_bytes + size > max_bytes:
                return None
        self.pinned_bytes += size
        return torch.empty(like.shape, dtype=like.dtype, pin_memory=True)

    def _drop_free(self) -> None:
        for bucket in self._free.values():
            for buf in bucket:
                self.pinned_bytes -= buf.numel() * buf.element_size()
        self._free = {}

    def give_after(self, event: torch.cuda.Event, buf: torch.Tensor) -> None:
        self._pending.append((event, buf))


class LayerCheckpointer:
    """Callable `checkpointer(fn, hidden, *args)` that recomputes `fn` in backward.

    `hidden` (the first positional argument) must be the only input that needs a gradient:
    that holds for a decoder layer, whose other inputs (masks, rotary tables) are constants;
    parameters used inside `fn` get their grads from the recomputation.
    With `offload=True` and a CUDA `hidden`, the saved input lives in pinned host memory
    (at most `max_host_gib` of it; further inputs stay on the device).

    >>> layer = torch.nn.Linear(4, 4)
    >>> x = torch.randn(3, 4, requires_grad=True)
    >>> LayerCheckpointer()(layer, x).sum().backward()
    >>> x.grad.shape, layer.weight.grad.shape
    (torch.Size([3, 4]), torch.Size([4, 4]))
    """

    def __init__(self, offload: bool = False, max_host_gib: Optional[float] = None):
        self.offload = offload
        # Pinned host memory is finite too: past this budget, inputs stay on the device.
        self.max_host_bytes = None if max_host_gib is None else int(max_host_gib * 2**30)
        self._pool = _HostBufferPool()
        self._stream = None
        self._order: List['_Parked'] = []  # this step's parked inputs, in forward order

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
        if all(p.consumed for p in self._order):
            self._order = []  # a new forward pass: the previous step's layers are done
        host = self._pool.take(hidden, self.max_host_bytes)
        if host is None:
            return hidden.detach()
        parked = _Parked(host, hidden.device, len(self._order))
        self._stream.wait_stream(torch.cuda.current_stream(hidden.device))
        with torch.cuda.stream(self._stream):
            parked.host.copy_(hidden.detach(), non_blocking=True)
            parked.on_host.record(self._stream)
        # The caller may free `hidden` right away; its memory must outlive the copy.
        hidden.record_stream(self._stream)
        self._order.append(parked)
        return parked

    def unpark(self, parked) -> torch.Tensor:
        """The saved input on its device. Backward visits layers in reverse order, so the
        layer before this one is fetched now, on the side stream, while this one computes."""
        if torch.is_tensor(parked):
            return parked
        if parked.on_device is None:
            self._fetch(parked)
        stream = torch.cuda.current_stream(parked.device)
        stream.wait_event(parked.fetched)
        out = parked.on_device
        out.record_stream(stream)
        parked.on_device = None
        parked.consumed = True
        if 0 < parked.index <= len(self._order) and self._order[parked.index - 1].on_device is None \
                and not self._order[parked.index - 1].consumed:
            self._fetch(self._order[parked.index - 1])
        return out

    def _fetch(self, parked) -> None:
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(parked.on_host)
            parked.on_device = parked.host.to(parked.device, non_blocking=True)
            parked.fetched.record(self._stream)
        self._pool.give_after(parked.fetched, parked.host)


class _Parked:
    """One layer input parked in host memory, and the events of its two copies."""

    def __init__(self, host: torch.Tensor, device: torch.device, index: int):
        self.host = host
        self.device = device
        self.index = index
        self.on_host = torch.cuda.Event()
        self.fetched = torch.cuda.Event()
        self.on_device = None
        self.consumed = False


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
