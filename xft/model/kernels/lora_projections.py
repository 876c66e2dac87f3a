"""Several LoRA projections of one input (attention's q, k and v) as one autograd function.

Three `FusedLoRALinear` calls on the same hidden states make three `x A^T` products and
three input grads that autograd then sums. Here the adapters' `x A^T` products are one
matmul against the stacked A's, and backward accumulates the input grad into one buffer
with in-place matmul-adds.

Each projection still gets its own output tensor, not a column block of one shared buffer:
attention keeps v for its backward, and a view of a shared buffer would keep q and k's
memory alive with it until then (3x v's size for multi-head attention), while separate
outputs let q and k go as soon as RoPE has read them.

Saved for backward, as for `FusedLoRALinear`: `x` (a view when already in the compute
dtype), the rank-sized `x A^T` products and compute-dtype copies of the adapters. Bases
are bias-free frozen linear layers, plain or bitsandbytes 4-bit (dequantized one at a time,
in forward and again in backward). With adapter dropout each projection drops its own copy
of `x` (peft's semantics): the copies are temporaries, made one at a time, and backward
regenerates them from the counter-based masks (`xft.model.kernels.dropout`) instead of
keeping them; the shared first matmul then splits into one per adapter.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .backend import autocast_dtype
from .dropout import NO_DROPOUT, AdapterDropout
from .lora_linear import add_base_product, dense_weight


def _offsets(sizes):
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    return list(zip(starts[:-1], starts[1:]))


class _LoRAProjectionsFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, bases, scalings, dropouts, *adapters):
        a_list, b_list = adapters[0::2], adapters[1::2]
        device_type = x.device.type
        dtype = autocast_dtype(x)
        ranks = _offsets([a.shape[0] for a in a_list])
        # Autocast is switched off inside so the in-place matmul-adds see one dtype.
        with torch.autocast(device_type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            outs = []
            a_cat = torch.cat(a_list).to(dtype)
            if any(d.p for d in dropouts):
                # Each adapter drops its own copy of x (a temporary, one at a time).
                xa = torch.cat([d.apply(x2) @ a_cat[r0:r1].t()
                                for d, (r0, r1) in zip(dropouts, ranks)], dim=1)
            else:
                xa = x2 @ a_cat.t()  # every adapter's down-projection in one matmul
            b_cast = [b.to(dtype) for b in b_list]
            for base, s, b, (r0, r1) in zip(bases, scalings, b_cast, ranks):
                out = torch.mm(xa[:, r0:r1] * s, b.t())
                out = add_base_product(out, x2, dense_weight(base, dtype).t())
                outs.append(out.view(*x.shape[:-1], out.shape[-1]))
        ctx.save_for_backward(x2, xa, a_cat, *b_cast)
        ctx.bases, ctx.scalings, ctx.ranks, ctx.dropouts = bases, scalings, ranks, dropouts
        ctx.param_dtypes = [p.dtype for p in adapters]
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return tuple(outs)

    @staticmethod
    def backward(ctx, *dys):
        x2, xa, a_cat, *b_cast = ctx.saved_tensors
        need = ctx.needs_input_grad
        dtype = x2.dtype
        dropouts = ctx.dropouts
        dx = None
        with torch.autocast(x2.device.type, enabled=False):
            dys2 = [dy.reshape(-1, dy.shape[-1]).to(dtype) for dy in dys]
            # Every adapter's tokens x r grad, scaled, side by side: their input-grad terms
            # are then one matmul against [A_q; A_k; A_v], written before the frozen
            # weights' products are added onto it (`add_base_product`).
            dy_b = torch.cat([(dy2 @ b).mul_(s) for dy2, b, s in zip(dys2, b_cast, ctx.scalings)],
                             dim=1)
            adapter_grads = [None] * (2 * len(dys2))
            for i, dy2 in enumerate(dys2):
                r0, r1 = ctx.ranks[i]
                if need[5 + 2 * i]:
                    adapter_grads[2 * i + 1] = (dy2.t() @ xa[:, r0:r1]).to(
                        ctx.param_dtypes[2 * i + 1]).mul_(ctx.scalings[i])
            dropped = any(d.p for d in dropouts)
            if need[0] and not dropped:
                dx = torch.mm(dy_b, a_cat)
            for i, d in enumerate(dropouts):
                r0, r1 = ctx.ranks[i]
                need_a = need[4 + 2 * i]
                x_adapter = x2  # dropout_i(x), regenerated from the seed, not kept
                if need[0] and dropped:
                    # Each adapter's input-grad term through its own mask, into one buffer;
                    # the same pass makes dropout_i(x) for A's grad.
                    term = torch.mm(dy_b[:, r0:r1], a_cat[r0:r1])
                    if need_a:
                        x_adapter = d.grad_pair(x2, term, out=dx)
                    elif dx is not None:
                        d.add_(dx, term)
                    else:
                        d.apply_(term)
                    if dx is None:
                        dx = term
                    del term
                elif need_a:
                    x_adapter = d.apply(x2)
                if need_a:
                    adapter_grads[2 * i] = (dy_b[:, r0:r1].t() @ x_adapter).to(ctx.param_dtypes[2 * i])
                del x_adapter
            if need[0]:
                for i, dy2 in enumerate(dys2):
                    dx = add_base_product(dx, dy2, dense_weight(ctx.bases[i], dtype))
        if dx is not None:
            dx = dx.view(ctx.x_shape).to(ctx.x_dtype)
        return (dx, None, None, None, *adapter_grads)


def lora_projections(x: torch.Tensor, adapters: Sequence[Tuple[torch.Tensor, torch.Tensor]],
                     bases: Sequence[nn.Module], scalings: Sequence[float],
                     dropouts: Optional[Sequence[AdapterDropout]] = None) -> Tuple[torch.Tensor, ...]:
    """`(base_i(x) + s_i * dropout_i(x) A_i^T B_i^T for each i)`, sharing the adapters'
    first matmul when no adapter drops out.

    `dropouts` holds one `AdapterDropout` per projection (each its own mask); None: none.

    >>> lin = [nn.Linear(4, 3, bias=False), nn.Linear(4, 2, bias=False)]
    >>> ab = [(torch.randn(2, 4), torch.randn(3, 2)), (torch.randn(1, 4), torch.randn(2, 1))]
    >>> x = torch.randn(5, 4)
    >>> y = lora_projections(x, ab, lin, (0.5, 2.0))
    >>> [tuple(t.shape) for t in y]
    [(5, 3), (5, 2)]
    >>> torch.allclose(y[1], lin[1](x) + 2.0 * x @ ab[1][0].T @ ab[1][1].T, atol=1e-5)
    True
    """
    flat = [t for pair in adapters for t in pair]
    dropouts = tuple(dropouts) if dropouts is not None else (NO_DROPOUT, ) * len(adapters)
    return _LoRAProjectionsFn.apply(x, tuple(bases), tuple(float(s) for s in scalings), dropouts,
                                    *flat)
