"""A LoRA linear layer as one autograd function: `y = x W^T + b + s * (x A^T) B^T`.

peft's LoRA layer runs the frozen base layer, then casts `x` to the adapter's fp32 dtype (a
full copy of the activations), applies dropout, two matmuls, a scale and an add, and autograd
keeps the fp32 copy for backward. Here the adapter runs in the activation dtype, the scale
folds into the matmul, backward computes only what is needed (no grad for the frozen W), and
the saved tensors are `x` (already kept by the caller) and the tiny `x A^T`. Adapter dropout
draws a counter-based mask (`xft.model.kernels.dropout`) that backward regenerates, so it
keeps nothing more than the dropout-free layer. The low-rank term is computed
first and the frozen weight's product added onto it (`add_base_product`). For a
bitsandbytes 4-bit base the weight is dequantized on the fly in forward and again in
backward, as bitsandbytes itself does.

The adapter's parameters stay where peft put them (usually fp32, the optimizer's master
copy); their grads come back in that dtype.
"""
from typing import NamedTuple, Optional

import torch
from torch import nn

from .backend import autocast_dtype
from .dropout import NO_DROPOUT, AdapterDropout, DropoutSeed

try:
    import bitsandbytes as bnb
except ImportError:  # pragma: no cover - bitsandbytes is pinned, but keep the import soft
    bnb = None


def dense_weight(base: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The base layer's weight as a dense `dtype` matrix (dequantized for 4-bit layers)."""
    if bnb is not None and isinstance(base, bnb.nn.Linear4bit):
        return dequantize_4bit(base.weight, base.weight.quant_state).to(dtype)
    return base.weight.to(dtype)


class _DirectDequantize:
    """bitsandbytes' CUDA 4-bit dequantization called straight through its C library.

    `bitsandbytes.functional.dequantize_4bit` costs about 100 us of Python and dispatcher
    time per call for about 30 us of GPU work; a QLoRA step of a 7B model makes 672 such
    calls (7 layers x 32 blocks x forward, recomputation, backward), which at 2k tokens
    leaves the GPU idle. This issues the same two kernels (nested absmax, then the 4-bit
    weights) with the same arguments. It checks itself once against bitsandbytes on the
    first weight it sees and falls back for good if the results differ or the library
    lacks the entry points.
    """

    def __init__(self):
        self.verified = None  # None: not yet checked; then True or False

    def __call__(self, weight: torch.Tensor, state) -> torch.Tensor:
        if self.verified is False or not weight.is_cuda:
            return bnb.functional.dequantize_4bit(weight, state)
        try:
            out = self._direct(weight, state)
        except (AttributeError, KeyError, TypeError, RuntimeError):
            self.verified = False
            return bnb.functional.dequantize_4bit(weight, state)
        if self.verified is None:
            self.verified = bool(torch.equal(out, bnb.functional.dequantize_4bit(weight, state)))
            if not self.verified:
                return bnb.functional.dequantize_4bit(weight, state)
        return out

    @staticmethod
    def _direct(weight, state):
        from bitsandbytes.cextension import lib
        names = {torch.bfloat16: 'bf16', torch.float16: 'fp16', torch.float32: 'fp32'}
        kernel = getattr(lib, f'cdequantize_blockwise_{names[state.dtype]}_{state.quant_type}')
        stream = torch._C._cuda_getCurrentRawStream(weight.device.index)
        absmax = state.absmax
        if state.nested:
            nested = torch.empty(absmax.shape, dtype=torch.float32, device=weight.device)
            lib.cdequantize_blockwise_fp32(state.state2.code.data_ptr(), absmax.data_ptr(),
                                           state.state2.absmax.data_ptr(), nested.data_ptr(),
                                           state.state2.blocksize, absmax.numel(), stream)
            absmax = nested.add_(state.offset)
        out = torch.empty(state.shape, dtype=state.dtype, device=weight.device)
        kernel(None, weight.data_ptr(), absmax.data_ptr(), out.data_ptr(), state.blocksize,
               out.numel(), stream)
        return out


dequantize_4bit = _DirectDequantize()


def add_base_product(out: torch.Tensor, x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """`out += x @ weight_t` in place, for `out` already holding the low-rank LoRA term.

    Order matters for speed: the rank-r product is memory-bound (it only writes tokens x
    features), and adding it afterwards with `addmm_` would read and write that whole output
    a second time. Written first, it is read once by the big matmul's epilogue (beta=1),
    which is compute-bound and hides the read: about 50 ms of a 7B step at 8k tokens.

    >>> out = torch.ones(2, 2)
    >>> add_base_product(out, torch.eye(2), torch.full((2, 2), 3.0))
    tensor([[4., 4.],
            [4., 4.]])
    """
    return out.addmm_(x, weight_t)


class _LoRALinearFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, base, scaling, dropout):
        dtype = autocast_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            a = lora_a.to(dtype)
            b = lora_b.to(dtype)
            # Dropout on the adapter's input only, as peft does. The dropped copy is a
            # temporary: backward regenerates it from the seed instead of keeping it.
            xa = dropout.apply(x2) @ a.t()
            out = add_base_product(torch.mm(xa * scaling, b.t()), x2, dense_weight(base, dtype).t())
            if base.bias is not None:
                out.add_(base.bias.to(dtype))
        # Keep the adapter in the compute dtype (a few MB) so backward needs no second cast.
        # The frozen base needs no input for its backward; only the adapter's input is kept
        # (x2 is a view of x when x is already in the compute dtype; the caller keeps x).
        ctx.save_for_backward(x2, xa, a, b)
        ctx.param_dtypes = (lora_a.dtype, lora_b.dtype)
        ctx.base = base
        ctx.scaling = scaling
        ctx.dropout = dropout
        ctx.x_dtype = x.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, xa, a, b = ctx.saved_tensors
        dropout = ctx.dropout
        dtype = x2.dtype
        dy2 = dy.reshape(-1, dy.shape[-1]).to(dtype)
        dyb = dy2 @ b  # tokens x r
        dx = da = db = None

        def a_grad(x_adapter):  # x_adapter: dropout(x), regenerated from the seed
            return (dyb.t() @ x_adapter).to(ctx.param_dtypes[0]).mul_(ctx.scaling)

        if ctx.needs_input_grad[0]:
            if dropout.p:
                # One pass makes both dropout(x) (for A's grad, freed before the frozen
                # weight's product) and the input-grad term mask / (1 - p) * scaling * (dy B A).
                dx = torch.mm(dyb, a)
                if ctx.needs_input_grad[1]:
                    da = a_grad(dropout.grad_pair(x2, dx, ctx.scaling))
                else:
                    dropout.apply_(dx, ctx.scaling)
            else:
                dx = torch.mm(dyb * ctx.scaling, a)
            dx = add_base_product(dx, dy2, dense_weight(ctx.base, dtype))
            dx = dx.view(*dy.shape[:-1], x2.shape[-1]).to(ctx.x_dtype)
        if ctx.needs_input_grad[1] and da is None:
            da = a_grad(dropout.apply(x2))
        if ctx.needs_input_grad[2]:
            db = (dy2.t() @ xa).to(ctx.param_dtypes[1]).mul_(ctx.scaling)
        return dx, da, db, None, None, None


def lora_linear(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, base: nn.Module,
                scaling: float, dropout: Optional[AdapterDropout] = None) -> torch.Tensor:
    """`base(x) + scaling * dropout(x) @ lora_a.T @ lora_b.T`, computed in `x.dtype`.

    `dropout` (an `AdapterDropout`: probability, seed and salt) draws the same mask in
    forward and backward; None means no dropout.

    >>> base = nn.Linear(4, 3, bias=False)
    >>> a, b = torch.randn(2, 4), torch.randn(3, 2)
    >>> x = torch.randn(5, 4)
    >>> torch.allclose(lora_linear(x, a, b, base, 0.5), base(x) + 0.5 * x @ a.T @ b.T, atol=1e-5)
    True
    """
    return _LoRALinearFn.apply(x, lora_a, lora_b, base, scaling, dropout or NO_DROPOUT)


def _dropout_p(module: nn.Module) -> Optional[float]:
    """The drop probability of peft's adapter dropout (0 for Identity); None if unknown."""
    if isinstance(module, nn.Identity):
        return 0.0
    if type(module) is nn.Dropout and 0 <= module.p < 1:
        return float(module.p)
    return None


class LoRAParts(NamedTuple):
    """What the fused functions need of one LoRA layer besides its tensors."""
    adapter: str
    scaling: float
    dropout_p: float  # peft's adapter dropout probability (applied in training only)


def lora_parts(layer: nn.Module) -> Optional[LoRAParts]:
    """`(adapter, scaling, dropout_p)` of a peft LoRA layer or `FusedLoRALinear` that the
    multi-layer fused functions (q/k/v, the MLP) compute exactly: what `FusedLoRALinear`
    takes, with no base bias; None otherwise.

    >>> lora_parts(nn.Linear(2, 2)) is None
    True
    """
    fused = layer if isinstance(layer, FusedLoRALinear) else FusedLoRALinear.from_module(layer)
    if fused is None or fused.base_layer.bias is not None:
        return None
    return LoRAParts(fused.adapter, fused.scaling, _dropout_p(fused.lora_dropout[fused.adapter]))


def layer_dropout(layer: nn.Module, adapter: str, p: float, seed: DropoutSeed) -> AdapterDropout:
    """The `AdapterDropout` of one LoRA layer for this call: off unless its dropout module
    is in training mode (peft's rule: `model.eval()` turns adapter dropout off)."""
    if p == 0.0 or not layer.lora_dropout[adapter].training:
        return NO_DROPOUT
    return AdapterDropout(p, seed, seed.salt(layer))


class FusedLoRALinear(nn.Module):
    """Replaces one peft LoRA linear layer (plain or bitsandbytes 4-bit base) while training.

    It holds the original's `base_layer`, `lora_A`, `lora_B` and `lora_dropout` containers,
    so its state dict keys equal peft's and a checkpoint of it loads into a peft model.
    `from_module` returns None for layers it can't compute exactly: several or no active
    adapters, merged weights, DoRA, LoRA bias, a trainable base weight, another dropout module.
    Adapter dropout follows peft's distribution with a counter-based mask
    (`xft.model.kernels.dropout`), not torch's generator: the same distribution, other bits.
    `dropout_seed` is the model's `DropoutSeed` (`apply_fast_path` passes one and advances it
    once per forward of the model); a layer built without one owns a seed and advances it at
    each training call, which is right only when nothing recomputes the layer.
    """

    def __init__(self, peft_layer: nn.Module, adapter: str,
                 dropout_seed: Optional[DropoutSeed] = None):
        super().__init__()
        self.base_layer = peft_layer.base_layer
        self.lora_A = peft_layer.lora_A
        self.lora_B = peft_layer.lora_B
        self.lora_dropout = peft_layer.lora_dropout
        self.adapter = adapter
        self.scaling = float(peft_layer.scaling[adapter])
        self.dropout_p = _dropout_p(self.lora_dropout[adapter])
        self.in_features = peft_layer.in_features
        self.out_features = peft_layer.out_features
        self.owns_seed = dropout_seed is None
        self.dropout_seed = DropoutSeed() if dropout_seed is None else dropout_seed
        # The peft layer's salt, so the fused MLP and q/k/v functions (which may have looked
        # it up on the peft layer first) draw the same mask for this adapter.
        self.dropout_salt = self.dropout_seed.salt(peft_layer)

    @classmethod
    def from_module(cls, layer: nn.Module,
                    dropout_seed: Optional[DropoutSeed] = None) -> Optional['FusedLoRALinear']:
        base = getattr(layer, 'base_layer', None)
        supported_bases = (nn.Linear, ) + ((bnb.nn.Linear4bit, ) if bnb is not None else ())
        if not isinstance(base, supported_bases) or base.weight.requires_grad:
            return None
        adapters = list(getattr(layer, 'active_adapters', []))
        if len(adapters) != 1 or getattr(layer, 'merged', False) or getattr(
                layer, 'disable_adapters', False):
            return None
        name = adapters[0]
        if name not in layer.lora_A or getattr(layer, 'use_dora', {}).get(name, False):
            return None
        if getattr(layer, 'lora_bias', {}).get(name, False):
            return None
        if layer.lora_B[name].bias is not None or layer.lora_A[name].bias is not None:
            return None
        if _dropout_p(layer.lora_dropout[name]) is None:
            return None
        if bnb is not None and isinstance(base, bnb.nn.Linear4bit) and getattr(
                base.weight.quant_state, 'packing_format_for_cpu', False):
            return None  # repacked for CPU inference: no dequantize path
        return cls(layer, name, dropout_seed)

    def replayable_dropouts(self):
        """The dropout modules whose masks this layer draws replayably (for the graphs)."""
        return list(self.lora_dropout.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropout = layer_dropout(self, self.adapter, self.dropout_p, self.dropout_seed)
        if dropout is not NO_DROPOUT and self.owns_seed:
            self.dropout_seed.advance()
        return lora_linear(x, self.lora_A[self.adapter].weight, self.lora_B[self.adapter].weight,
                           self.base_layer, self.scaling, dropout)

    def extra_repr(self) -> str:
        return (f'{self.in_features}->{self.out_features}, scaling={self.scaling}'
                + (f', dropout={self.dropout_p}' if self.dropout_p else ''))
