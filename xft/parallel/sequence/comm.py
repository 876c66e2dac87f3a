"""Collectives of sequence parallelism, as autograd functions.

``all_to_all`` is DeepSpeed-Ulysses' exchange: each rank cuts its tensor into ``sp`` pieces
along ``scatter_dim``, sends piece ``i`` to rank ``i`` of the group, and joins what it receives
along ``gather_dim`` in rank order. Before attention it turns (all heads, this rank's tokens)
into (this rank's heads, all tokens); after attention it turns them back. Its backward is the
reverse exchange. The split/gather pairs cut a tensor into this rank's piece (and gather the
gradient back), or gather the pieces (and keep this rank's piece of the gradient).

XTuner 0.1.23's names and argument order; the group is always passed explicitly.
"""
import torch
import torch.distributed as dist


def _world(group) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def _exchange(tensor: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    world = _world(group)
    if world == 1:
        return tensor
    scatter_dim %= tensor.dim()
    gather_dim %= tensor.dim()
    if tensor.shape[scatter_dim] % world:
        raise ValueError(f'all_to_all: dimension {scatter_dim} of size {tensor.shape[scatter_dim]} '
                         f'does not split into {world} equal pieces')
    # (..., world * n, ...) -> (world, ..., n, ...): piece i, contiguous, goes to rank i.
    send = tensor.unflatten(scatter_dim, (world, -1)).movedim(scatter_dim, 0).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    # At 256k tokens a rank's queries are 2 GiB: hold at most two such buffers at once. (NCCL
    # keeps its own reference while the exchange still reads them.)
    del send
    # received[i] came from rank i: put the rank axis right before gather_dim and merge them.
    return received.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


class _AllToAll(torch.autograd.Function):

    @staticmethod
    def forward(ctx, tensor, group, scatter_dim, gather_dim):
        ctx.group, ctx.scatter_dim, ctx.gather_dim = group, scatter_dim, gather_dim
        return _exchange(tensor, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        return _exchange(grad.contiguous(), ctx.group, ctx.gather_dim, ctx.scatter_dim), None, None, None


def all_to_all(input: torch.Tensor, sp_group, scatter_dim: int = 2, gather_dim: int = 1) -> torch.Tensor:
    """Scatter ``input`` along ``scatter_dim`` over the group, gather along ``gather_dim``.

    With XTuner's defaults, (batch, tokens / sp, heads, dim) becomes (batch, tokens, heads / sp, dim).
    """
    return _AllToAll.apply(input, sp_group, scatter_dim, gather_dim)


def split_for_sequence_parallel(input: torch.Tensor, dim: int, sp_group) -> torch.Tensor:
    """This rank's piece of ``input`` cut into ``sp`` equal pieces along ``dim`` (no autograd
    bookkeeping: for inputs such as token ids and labels)."""
    world = _world(sp_group)
    if world == 1:
        return input
    if input.shape[dim] % world:
        raise ValueError(f'split_for_sequence_parallel: dimension {dim} of size {input.shape[dim]} '
                         f'does not split into {world} equal pieces; pad it first (pad_for_sequence_parallel)')
    return input.chunk(world, dim=dim)[dist.get_rank(sp_group)].contiguous()


def gather_for_sequence_parallel(input: torch.Tensor, dim: int, sp_group) -> torch.Tensor:
    """Every rank's piece, joined along ``dim`` in rank order."""
    world = _world(sp_group)
    if world == 1:
        return input
    pieces = [torch.empty_like(input) for _ in range(world)]
    dist.all_gather(pieces, input.contiguous(), group=sp_group)
    return torch.cat(pieces, dim=dim)


def _scaled(grad, group, grad_scale):
    if grad_scale == 'up':
        return grad * _world(group)
    if grad_scale == 'down':
        return grad / _world(group)
    if grad_scale is not None:
        raise ValueError(f"grad_scale: expected 'up', 'down' or None, got {grad_scale!r}")
    return grad


class _GatherForwardSplitBackward(torch.autograd.Function):

    @staticmethod
    def forward(ctx, input, dim, group, grad_scale):
        ctx.dim, ctx.group, ctx.grad_scale = dim, group, grad_scale
        return gather_for_sequence_parallel(input, dim, group)

    @staticmethod
    def backward(ctx, grad):
        grad = _scaled(grad, ctx.group, ctx.grad_scale)
        return split_for_sequence_parallel(grad, ctx.dim, ctx.group), None, None, None


class _SplitForwardGatherBackward(torch.autograd.Function):

    @staticmethod
    def forward(ctx, input, dim, group, grad_scale):
        ctx.dim, ctx.group, ctx.grad_scale = dim, group, grad_scale
        return split_for_sequence_parallel(input, dim, group)

    @staticmethod
    def backward(ctx, grad):
        grad = _scaled(grad, ctx.group, ctx.grad_scale)
        return gather_for_sequence_parallel(grad.contiguous(), ctx.dim, ctx.group), None, None, None


def gather_forward_split_backward(input, dim, sp_group, grad_scale=None):
    """Gather the pieces in forward; keep this rank's piece of the gradient in backward,
    optionally scaled ``'up'`` (times sp) or ``'down'`` (divided by sp)."""
    return _GatherForwardSplitBackward.apply(input, dim, sp_group, grad_scale)


def split_forward_gather_backward(input, dim, sp_group, grad_scale=None):
    """Keep this rank's piece in forward; gather the gradient in backward (optionally scaled)."""
    return _SplitForwardGatherBackward.apply(input, dim, sp_group, grad_scale)
