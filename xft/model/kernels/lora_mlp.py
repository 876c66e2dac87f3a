"""A Llama-style MLP whose three projections carry LoRA, `down(silu(gate(x)) * up(x))`, as
one autograd function that keeps little for backward.

With one autograd node per projection (`FusedLoRALinear`) and a fused activation
(`FusedSwiGLUMLP`), backward holds gate, up and `h = silu(gate) * up` (down's input), then
allocates d gate and d up while they live: about 5 x tokens x ffn at the peak, the largest
moment of a checkpointed decoder layer's backward. Here:

- forward writes gate and up into one (tokens, 2 ffn) buffer `gu = [gate | up]` and keeps
  only it, the MLP input `x`, the rank-sized `x A^T` products and compute-dtype copies of
  the adapters; `h` is dropped after the down projection;
- backward recomputes `h` from `gu` just for down's A grad and frees it before `dh` exists,
  then writes d gate and d up over `gu` in place (`swiglu_packed_backward_`).

Saved: 2 x tokens x ffn instead of 3; backward peak about 3 x tokens x ffn instead of 5.
For a bitsandbytes 4-bit base each weight is dequantized once in forward and once in
backward, one at a time, as `FusedLoRALinear` does.

Adapter dropout (peft's semantics: gate and up each drop x with their own mask, down drops
its input h) keeps nothing more: the masks are counter-based (`xft.model.kernels.dropout`)
and regenerated in backward, down's dropped input is made a block of rows at a time in
forward, and backward drops the recomputed h in place.

Everything stays on the device with no host syncs or branches on tensor values, so a step
using it can be captured in a CUDA graph (after a warm-up, which also settles the one-time
check of the direct 4-bit dequantization).
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .backend import autocast_dtype
from .dropout import NO_DROPOUT, AdapterDropout, DropoutSeed
from .lora_linear import add_base_product, dense_weight, layer_dropout, lora_parts
from .swiglu import SILU_TYPES, swiglu_packed, swiglu_packed_backward_

_PROJECTIONS = ('gate_proj', 'up_proj', 'down_proj')


# Elements of the MLP's hidden activation h dropped at a time for the down adapter's input,
# so the dropped copy is a block (16 MB in bf16: 762 rows at ffn 11008) and not a second
# tokens x ffn tensor (180 MB at 8k tokens), in few enough blocks to keep launches rare.
_DOWN_DROPOUT_ELEMENTS = 8 * 2**20


class _LoRAMLPFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, a_gate, b_gate, a_up, b_up, a_down, b_down, bases, scalings, dropouts):
        base_gate, base_up, base_down = bases
        s_gate, s_up, s_down = scalings
        drop_gate, drop_up, drop_down = dropouts
        dtype = autocast_dtype(x)
        ff = b_gate.shape[0]
        r_gate = a_gate.shape[0]
        # Autocast is switched off inside so the in-place matmul-adds see one dtype.
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            gu = x2.new_empty(x2.shape[0], 2 * ff)
            gate, up = gu[:, :ff], gu[:, ff:]
            # One dense weight at a time (a 4-bit base dequantizes into a temporary), each
            # matmul writing straight into its column half of `gu`.
            a_gu = torch.cat([a_gate, a_up]).to(dtype)
            if drop_gate.p or drop_up.p:
                # Each adapter drops its own copy of x (temporaries, one at a time).
                xa_gu = torch.cat([drop_gate.apply(x2) @ a_gu[:r_gate].t(),
                                   drop_up.apply(x2) @ a_gu[r_gate:].t()], dim=1)
            else:
                xa_gu = x2 @ a_gu.t()  # both adapters' down-projections in one matmul
            b_gate2, b_up2 = b_gate.to(dtype), b_up.to(dtype)
            # The low-rank terms first, the frozen weights' products added onto them
            # (`add_base_product` says why).
            torch.mm(xa_gu[:, :r_gate] * s_gate, b_gate2.t(), out=gate)
            torch.mm(xa_gu[:, r_gate:] * s_up, b_up2.t(), out=up)
            add_base_product(gate, x2, dense_weight(base_gate, dtype).t())
            add_base_product(up, x2, dense_weight(base_up, dtype).t())
            h = swiglu_packed(gu)
            a_down2, b_down2 = a_down.to(dtype), b_down.to(dtype)
            xa_down = drop_down.matmul(h, a_down2.t(), max(1, _DOWN_DROPOUT_ELEMENTS // ff))
            out = add_base_product(torch.mm(xa_down * s_down, b_down2.t()), h,
                                   dense_weight(base_down, dtype).t())
            del h  # not saved: backward recomputes it from gu
        # x2 is a view of x when x is already in the compute dtype (the caller keeps x
        # anyway); the adapters' compute-dtype copies are a few MB and spare backward a cast.
        # No dropout mask is kept: backward regenerates the masks from the seed.
        ctx.save_for_backward(x2, gu, xa_gu, xa_down, a_gu, b_gate2, b_up2, a_down2, b_down2)
        ctx.bases = bases
        ctx.scalings = scalings
        ctx.dropouts = dropouts
        ctx.r_gate = r_gate
        ctx.param_dtypes = tuple(p.dtype for p in (a_gate, b_gate, a_up, b_up, a_down, b_down))
        ctx.x_shape = x.shape
        ctx.x_dtype = x.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, gu, xa_gu, xa_down, a_gu, b_gate, b_up, a_down, b_down = ctx.saved_tensors
        base_gate, base_up, base_down = ctx.bases
        s_gate, s_up, s_down = ctx.scalings
        drop_gate, drop_up, drop_down = ctx.dropouts
        r = ctx.r_gate
        need = ctx.needs_input_grad
        dtypes = ctx.param_dtypes
        dtype = gu.dtype
        ff = gu.shape[1] // 2
        dx = da_gate = db_gate = da_up = db_up = da_down = db_down = None
        with torch.autocast(dy.device.type, enabled=False):
            dy2 = dy.reshape(-1, dy.shape[-1]).to(dtype)
            # Down projection. h is rebuilt only for its A grad (dropped in place: it is a
            # temporary) and freed before dh is allocated, so at most one tokens x ffn
            # tensor sits beside gu.
            dy_b = dy2 @ b_down  # tokens x r
            if need[5]:
                h = drop_down.apply_(swiglu_packed(gu))
                da_down = (dy_b.t() @ h).to(dtypes[4]).mul_(s_down)
                del h
            if need[6]:
                db_down = (dy2.t() @ xa_down).to(dtypes[5]).mul_(s_down)
            if drop_down.p:  # mask / (1 - p) and the scaling in one pass, in place
                dh = drop_down.apply_(torch.mm(dy_b, a_down), s_down)
            else:
                dh = torch.mm(dy_b * s_down, a_down)
            dh = add_base_product(dh, dy2, dense_weight(base_down, dtype))
            del dy2, dy_b
            # SwiGLU: gu becomes [d gate | d up].
            dgu = swiglu_packed_backward_(dh, gu)
            del dh
            dgate, dup = dgu[:, :ff], dgu[:, ff:]
            dgate_b = dgate @ b_gate
            dup_b = dup @ b_up
            if need[2]:
                db_gate = (dgate.t() @ xa_gu[:, :r]).to(dtypes[1]).mul_(s_gate)
            if need[4]:
                db_up = (dup.t() @ xa_gu[:, r:]).to(dtypes[3]).mul_(s_up)
            a_grads = [None, None]  # gate's and up's A grads
            adapters = ((drop_gate, dgate_b, a_gu[:r], s_gate, need[1], dtypes[0]),
                        (drop_up, dup_b, a_gu[r:], s_up, need[3], dtypes[2]))
            if need[0] and (drop_gate.p or drop_up.p):
                # Each adapter's input-grad term through its own mask, into one buffer; the
                # same pass makes the adapter's dropped input for its A grad.
                for i, (drop, d_b, a, s, need_a, a_dtype) in enumerate(adapters):
                    term = torch.mm(d_b, a)
                    if need_a:
                        x_adapter = drop.grad_pair(x2, term, s, out=dx)
                        a_grads[i] = (d_b.t() @ x_adapter).to(a_dtype).mul_(s)
                        del x_adapter
                    elif dx is not None:
                        drop.add_(dx, term, s)
                    else:
                        drop.apply_(term, s)
                    if dx is None:
                        dx = term
                    del term
            else:
                for i, (drop, d_b, a, s, need_a, a_dtype) in enumerate(adapters):
                    if need_a:
                        a_grads[i] = (d_b.t() @ drop.apply(x2)).to(a_dtype).mul_(s)
                if need[0]:
                    # Both adapters' input-grad terms in one matmul against [A_gate; A_up].
                    dgu_b = torch.cat([dgate_b * s_gate, dup_b * s_up], dim=1)
                    dx = torch.mm(dgu_b, a_gu)
            da_gate, da_up = a_grads
            if need[0]:
                add_base_product(dx, dgate, dense_weight(base_gate, dtype))
                add_base_product(dx, dup, dense_weight(base_up, dtype))
                dx = dx.view(ctx.x_shape).to(ctx.x_dtype)
        return dx, da_gate, db_gate, da_up, db_up, da_down, db_down, None, None, None


def lora_mlp(x: torch.Tensor, adapters: Sequence[Tuple[torch.Tensor, torch.Tensor]],
             bases: Sequence[nn.Module], scalings: Sequence[float],
             dropouts: Optional[Sequence[AdapterDropout]] = None) -> torch.Tensor:
    """`down(silu(gate(x)) * up(x))` where each projection is `base(x) + s * drop(x) A^T B^T`.

    `adapters`, `bases`, `scalings` and `dropouts` list gate, up and down in that order;
    `adapters` holds `(A, B)` pairs, `dropouts` one `AdapterDropout` each (None: none; gate
    and up drop x, each with its own mask, down drops its input h). Bases are bias-free
    frozen linear layers (plain or 4-bit).

    >>> from torch.nn import functional as F
    >>> lin = [nn.Linear(4, 6, bias=False), nn.Linear(4, 6, bias=False),
    ...        nn.Linear(6, 4, bias=False)]
    >>> ab = [(torch.randn(2, 4), torch.randn(6, 2)), (torch.randn(3, 4), torch.randn(6, 3)),
    ...       (torch.randn(2, 6), torch.randn(4, 2))]
    >>> proj = lambda i, t: lin[i](t) + 0.5 * t @ ab[i][0].T @ ab[i][1].T
    >>> x = torch.randn(5, 4)
    >>> ref = proj(2, F.silu(proj(0, x)) * proj(1, x))
    >>> torch.allclose(lora_mlp(x, ab, lin, (0.5, 0.5, 0.5)), ref, atol=1e-5)
    True
    """
    (a_g, b_g), (a_u, b_u), (a_d, b_d) = adapters
    dropouts = tuple(dropouts) if dropouts is not None else (NO_DROPOUT, ) * 3
    return _LoRAMLPFn.apply(x, a_g, b_g, a_u, b_u, a_d, b_d, tuple(bases),
                            tuple(float(s) for s in scalings), dropouts)


class FusedLoRAMLP(nn.Module):
    """Replaces a SiLU-gated MLP whose gate, up and down projections are peft LoRA layers.

    It holds the original `gate_proj`, `up_proj` and `down_proj` (peft layers, or the
    `FusedLoRALinear` the LoRA swap later puts in their place: both expose `base_layer`,
    `lora_A`, `lora_B` and `lora_dropout`), so state dict keys are unchanged. `from_module`
    returns None unless all three are layers `FusedLoRALinear` takes, sharing one active
    adapter, with bias-free bases; the caller then keeps `FusedSwiGLUMLP`. Adapter dropout
    draws replayable masks from `dropout_seed` (the model's `DropoutSeed`; a module built
    without one owns a seed and advances it at each training call).
    """

    def __init__(self, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module,
                 adapter: str, dropout_seed: Optional[DropoutSeed] = None):
        super().__init__()
        self.gate_proj = gate_proj
        self.up_proj = up_proj
        self.down_proj = down_proj
        self.adapter = adapter
        layers = (gate_proj, up_proj, down_proj)
        # Read once, as FusedLoRALinear does: Python floats per projection.
        self.scalings = tuple(float(p.scaling[adapter]) for p in layers)
        self.dropout_p = tuple(lora_parts(p).dropout_p for p in layers)
        self.owns_seed = dropout_seed is None
        self.dropout_seed = DropoutSeed() if dropout_seed is None else dropout_seed

    @classmethod
    def from_module(cls, module: nn.Module,
                    dropout_seed: Optional[DropoutSeed] = None) -> Optional['FusedLoRAMLP']:
        if not isinstance(getattr(module, 'act_fn', None), SILU_TYPES):
            return None
        layers = [getattr(module, name, None) for name in _PROJECTIONS]
        if any(layer is None for layer in layers):
            return None
        parts = [lora_parts(layer) for layer in layers]
        if not all(parts) or len({part.adapter for part in parts}) != 1:
            return None
        adapter = parts[0].adapter
        gate, up, down = layers
        if not (gate.in_features == up.in_features == down.out_features
                and gate.out_features == up.out_features == down.in_features):
            return None
        return cls(gate, up, down, adapter, dropout_seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = (self.gate_proj, self.up_proj, self.down_proj)
        adapters = [(p.lora_A[self.adapter].weight, p.lora_B[self.adapter].weight)
                    for p in layers]
        dropouts = [layer_dropout(p, self.adapter, prob, self.dropout_seed)
                    for p, prob in zip(layers, self.dropout_p)]
        if self.owns_seed and any(d is not NO_DROPOUT for d in dropouts):
            self.dropout_seed.advance()
        return lora_mlp(x, adapters, [p.base_layer for p in layers], self.scalings, dropouts)

    def extra_repr(self) -> str:
        return (f'adapter={self.adapter!r}, scalings={self.scalings}'
                + (f', dropout={self.dropout_p}' if any(self.dropout_p) else ''))
