"""Data parallelism that reduces gradients once per optimizer step, after its last backward.

``StepDataParallel`` is the model wrapper ``xft train`` uses for LoRA and QLoRA under a
launcher (``model_wrapper_cfg=dict(type='StepDataParallel')``; any config can name it, full
fine-tuning included). What it does, against torch's DDP:

- at start, the trainable parameters are broadcast from rank 0 (frozen and quantized
  weights are loaded from the same files on every rank and never travel);
- no per-parameter autograd hook: inside an accumulation window (mmengine's ``no_sync``, as
  for DDP) nothing is communicated; the window's last micro-batch queues one callback that
  autograd runs when that backward has finished, and the callback all-reduces every
  trainable ``.grad`` in flat buckets and averages it. Gradients written by the CUDA-graphed
  layers (``xft.model.kernels.graphs``: buffers handed to the parameters as ``.grad``,
  bypassing autograd's accumulation) are reduced like those of eager autograd, so the graphs
  stay on under a process group;
- averaging, as DDP does, is what ``xft.engine.token_weighting`` expects: it scales each
  micro-batch by ``ranks / step_tokens`` so that the average over ranks is the step's
  token sum over ``step_tokens``, equal to one process with the same total batch;
- a trainable parameter without a gradient on any rank (an unused branch) keeps ``None``;
  one with a gradient on some ranks only is reduced with zeros for the others (one small
  all-reduce of a presence mask per step decides).

Why not overlap the reduction with the backward: for LoRA r=64 on a 7B model the step's
gradients are 160 M fp32 numbers (0.6 GiB), at NVLink's bandwidth an all-reduce of a few
milliseconds (an estimate), paid once per optimizer step (16 micro-batches of about 0.2 s in
the zoo configs).
Full fine-tuning, whose gradients are the model's size, belongs to ZeRO (``--deepspeed``).

Memory: at most two buckets (``bucket_mb`` each) exist at a time, allocated after the
backward has freed its activations; DDP instead keeps a bucketed copy of every gradient.
"""
import contextlib
from typing import Dict, Iterable, List

import torch
import torch.distributed as dist
from mmengine.logging import print_log
from mmengine.registry import MODEL_WRAPPERS
from torch import nn

from xft.model.kernels.graphs import graph_families
from xft.utils.errors import UserError

MIB = 2**20


def refuse_other_world_size(saved: int, now: int, checkpoint: str) -> None:
    """A resume with another number of processes than the checkpoint's is refused.

    It could not continue the saved run: each rank's position in the data (the sampler
    deals rank r the samples r, r+N, ...), the open accumulation window, the random
    generators and the iteration count (and with it the learning-rate schedule) all belong
    to the saved process count, and a ZeRO checkpoint is partitioned by it.
    """
    if saved and now != saved:
        raise UserError(f'{checkpoint}: saved by {saved} process{"es" if saved > 1 else ""}, this run has {now}; '
                        f'resuming with another process count is refused (the data order, accumulation '
                        f'window and schedule depend on it). Resume with {saved} processes, or start a new run '
                        f'from its weights with --cfg-options load_from={checkpoint}')


def broadcast_parameters(params: Iterable[nn.Parameter], src: int = 0, group=None) -> None:
    """Every rank takes rank ``src``'s values of ``params`` (in place)."""
    with torch.no_grad():
        for param in params:
            dist.broadcast(param.data, src=src, group=group)


class GradientReducer:
    """All-reduces (averages) the ``.grad`` of ``params`` over the ranks, in flat buckets.

    ``params`` must be the same list, in the same order, on every rank. ``reductions`` counts
    the calls of :meth:`reduce` (optimizer steps) and ``collectives`` the all-reduces issued.
    """

    def __init__(self, params: Iterable[nn.Parameter], bucket_mb: float = 32, group=None):
        self.params: List[nn.Parameter] = [p for p in params if p.requires_grad]
        self.bucket_bytes = max(int(bucket_mb * MIB), 1)
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.reductions = 0
        self.collectives = 0

    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)

    def reduce_after_backward_of(self, loss: torch.Tensor) -> None:
        """Reduce once the backward that starts at ``loss`` has finished (every gradient of
        the step written, by autograd or by a replayed graph)."""
        if not loss.requires_grad:
            return

        def queue(grad):
            torch.autograd.Variable._execution_engine.queue_callback(self.reduce)

        loss.register_hook(queue)

    def _all_reduce(self, tensor: torch.Tensor):
        self.collectives += 1
        return dist.all_reduce(tensor, group=self.group, async_op=True)

    @torch.no_grad()
    def reduce(self) -> None:
        self.reductions += 1
        if not self.params:
            return
        present = torch.tensor([p.grad is not None for p in self.params], dtype=torch.int32,
                               device=self.params[0].device)
        self._all_reduce(present).wait()
        grads = []
        for param, count in zip(self.params, present.tolist()):
            if count == 0:
                continue  # no rank has a gradient: it stays None, as under DDP
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grads.append(param.grad)
        pending = []
        for bucket in self._buckets(grads):
            pending.append(self._start(bucket))
            if len(pending) == 2:  # two buckets in flight: the next copy overlaps a reduction
                self._finish(*pending.pop(0))
        for item in pending:
            self._finish(*item)

    def _buckets(self, grads: List[torch.Tensor]):
        """Runs of gradients of one dtype and device holding at most ``bucket_bytes``
        (a larger gradient is a bucket of its own)."""
        by_kind: Dict[tuple, List[torch.Tensor]] = {}
        for grad in grads:
            by_kind.setdefault((grad.device, grad.dtype), []).append(grad)
        for run in by_kind.values():
            bucket, size = [], 0
            for grad in run:
                nbytes = grad.numel() * grad.element_size()
                if bucket and size + nbytes > self.bucket_bytes:
                    yield bucket
                    bucket, size = [], 0
                bucket.append(grad)
                size += nbytes
            if bucket:
                yield bucket

    def _start(self, bucket: List[torch.Tensor]):
        if len(bucket) == 1 and bucket[0].is_contiguous():
            flat = bucket[0]  # reduced in place
        else:
            flat = torch.cat([grad.reshape(-1) for grad in bucket])
        return self._all_reduce(flat), flat, bucket

    def _finish(self, work, flat: torch.Tensor, bucket: List[torch.Tensor]) -> None:
        work.wait()
        flat.div_(self.world_size)
        if len(bucket) == 1 and flat is bucket[0]:
            return
        offset = 0
        for grad in bucket:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()


@MODEL_WRAPPERS.register_module()
class StepDataParallel(nn.Module):
    """``model_wrapper_cfg = dict(type='StepDataParallel', bucket_mb=32)``: data parallelism
    with one gradient reduction per optimizer step (see the module doc).

    It offers what mmengine's Runner and optimizer wrappers ask of a model wrapper:
    ``module``, ``train_step``/``val_step``/``test_step`` and ``no_sync`` (mmengine's
    ``OptimWrapper.optim_context`` enters it on every micro-batch but a window's last).
    """

    def __init__(self, module: nn.Module, bucket_mb: float = 32, broadcast: bool = True):
        super().__init__()
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError('StepDataParallel needs a process group (start with a launcher)')
        self.module = module
        self.reducer = GradientReducer(module.parameters(), bucket_mb=bucket_mb)
        self._sync = True
        if broadcast:
            broadcast_parameters(self.reducer.params)
        families = graph_families(module)
        for family in families:
            family.grads_reduced_after_backward = True
        print_log(f'StepDataParallel: {dist.get_world_size()} ranks; {len(self.reducer.params)} trainable '
                  f'tensors ({self.reducer.numel():,} parameters, {self.reducer.nbytes() / MIB:,.1f} MiB) '
                  f'averaged once per optimizer step after its last backward, in buckets of '
                  f'{bucket_mb:g} MiB{"; CUDA graphs stay on" if families else ""}', logger='current')

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Micro-batches run inside it add to the local gradients only."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def train_step(self, data, optim_wrapper) -> Dict[str, torch.Tensor]:
        """mmengine's ``train_step``, with the reduction queued on a window's last backward."""
        with optim_wrapper.optim_context(self):
            reduce = self._sync  # decided by the context, as DDP decides in its forward
            data = self.module.data_preprocessor(data, training=True)
            losses = self._run_forward(data)
        parsed_loss, log_vars = self.module.parse_losses(losses)
        if reduce:
            self.reducer.reduce_after_backward_of(parsed_loss)
        optim_wrapper.update_params(parsed_loss)
        return log_vars

    def _run_forward(self, data):
        if isinstance(data, dict):
            return self(**data, mode='loss')
        if isinstance(data, (list, tuple)):
            return self(*data, mode='loss')
        raise TypeError(f'the data preprocessor returned {type(data).__name__}, expected a dict, list or tuple')

    def val_step(self, data):
        return self.module.val_step(data)

    def test_step(self, data):
        return self.module.test_step(data)
