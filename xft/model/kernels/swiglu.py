"""SwiGLU `silu(gate) * up` as one Triton kernel each way, and the MLP module that uses it.

Eager torch launches two kernels forward and keeps three tensors of tokens x ffn for
backward (gate, silu(gate), up); the fused op keeps only gate and up and recomputes the
sigmoid in the backward kernel, which also writes both input grads in one pass.
"""
import torch
from torch import nn
from torch.nn import functional as F

from .backend import tl, triton, use_triton

try:  # transformers 5.24 wraps F.silu in its own class; 5.17 uses nn.SiLU.
    from transformers.activations import SiLUActivation
    SILU_TYPES = (nn.SiLU, SiLUActivation)
except ImportError:  # pragma: no cover - older transformers
    SILU_TYPES = (nn.SiLU,)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up` in plain torch.

    >>> swiglu_reference(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0]))
    tensor([0.0000, 1.4621])
    """
    return F.silu(gate) * up


if triton is not None:

    @triton.jit
    def _swiglu_fwd(G, U, Y, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
        y = g * tl.sigmoid(g) * u
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_bwd(DY, G, U, DG, DU, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        silu = g * sig
        tl.store(DU + offs, (dy * silu).to(DU.dtype.element_ty), mask=mask)
        dsilu = sig * (1.0 + g * (1.0 - sig))
        tl.store(DG + offs, (dy * u * dsilu).to(DG.dtype.element_ty), mask=mask)


    # The packed variants read gate and up from one (tokens, 2 * ffn) buffer laid out as
    # [gate | up] per row, so a fused LoRA MLP can fill both projections into one
    # allocation and later overwrite it with their grads (`xft.model.kernels.lora_mlp`).
    # One program handles BLOCK columns of one row; rows go on grid axis 0, whose limit
    # (2^31 - 1) long sequences can't reach, unlike axis 1's 65535.
    @triton.jit
    def _swiglu_packed_fwd(GU, Y, n_cols, stride_gu, stride_y, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        g_ptr = GU + row * stride_gu + cols
        g = tl.load(g_ptr, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(g_ptr + n_cols, mask=mask, other=0.0).to(tl.float32)
        y = g * tl.sigmoid(g) * u
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_packed_bwd_inplace(DY, GU, n_cols, stride_dy, stride_gu, BLOCK: tl.constexpr):
        # Each element is loaded before its own slot is overwritten and no program touches
        # another's slots, so writing the grads over gate and up in place is safe.
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        g_ptr = GU + row * stride_gu + cols
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(g_ptr + n_cols, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        dsilu = sig * (1.0 + g * (1.0 - sig))
        tl.store(g_ptr, (dy * u * dsilu).to(GU.dtype.element_ty), mask=mask)
        tl.store(g_ptr + n_cols, (dy * g * sig).to(GU.dtype.element_ty), mask=mask)


_BLOCK = 2048
_PACKED_BLOCK = 1024


class _SwiGLUFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, gate, up):
        gate = gate.contiguous()
        up = up.contiguous()
        y = torch.empty_like(gate)
        n = gate.numel()
        _swiglu_fwd[(triton.cdiv(n, _BLOCK),)](gate, up, y, n, BLOCK=_BLOCK, num_warps=8)
        ctx.save_for_backward(gate, up)
        return y

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        dy = dy.contiguous()
        dg = torch.empty_like(gate)
        du = torch.empty_like(up)
        n = gate.numel()
        _swiglu_bwd[(triton.cdiv(n, _BLOCK),)](dy, gate, up, dg, du, n, BLOCK=_BLOCK,
                                               num_warps=8)
        return dg, du


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up`: fused on CUDA with Triton, `swiglu_reference` elsewhere.

    >>> swiglu(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0]))
    tensor([0.0000, 1.4621])
    """
    if use_triton(gate, up) and gate.shape == up.shape and gate.dtype == up.dtype:
        return _SwiGLUFn.apply(gate, up)
    return swiglu_reference(gate, up)


def _check_packed(gu: torch.Tensor) -> int:
    if gu.dim() != 2 or gu.shape[1] % 2 or gu.stride(1) != 1:
        raise ValueError(f'expected a (tokens, 2 * ffn) buffer with unit column stride, got '
                         f'shape {tuple(gu.shape)} strides {gu.stride()}')
    return gu.shape[1] // 2


def swiglu_packed(gu: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up` for `gu = [gate | up]` (tokens x 2 ffn); returns tokens x ffn.

    No autograd: it serves autograd functions that handle the backward themselves.

    >>> gu = torch.tensor([[0.0, 1.0, 2.0, 2.0]])
    >>> swiglu_packed(gu)
    tensor([[0.0000, 1.4621]])
    """
    ff = _check_packed(gu)
    if not use_triton(gu):
        return swiglu_reference(gu[:, :ff], gu[:, ff:])
    y = gu.new_empty(gu.shape[0], ff)
    grid = (gu.shape[0], triton.cdiv(ff, _PACKED_BLOCK))
    _swiglu_packed_fwd[grid](gu, y, ff, gu.stride(0), y.stride(0), BLOCK=_PACKED_BLOCK,
                             num_warps=4)
    return y


def swiglu_packed_backward_(dy: torch.Tensor, gu: torch.Tensor) -> torch.Tensor:
    """Overwrite `gu = [gate | up]` with `[d gate | d up]` given `dy`, the grad of
    `silu(gate) * up`; returns `gu`. Reusing the buffer saves two tokens x ffn allocations.

    >>> gu = torch.tensor([[0.0, 1.0, 2.0, 2.0]])
    >>> swiglu_packed_backward_(torch.ones(1, 2), gu)
    tensor([[1.0000, 1.8553, 0.0000, 0.7311]])
    """
    ff = _check_packed(gu)
    if dy.shape != (gu.shape[0], ff) or dy.stride(1) != 1:
        raise ValueError(f'dy of shape {tuple(dy.shape)} does not fit gu {tuple(gu.shape)}')
    if use_triton(dy, gu):
        grid = (gu.shape[0], triton.cdiv(ff, _PACKED_BLOCK))
        _swiglu_packed_bwd_inplace[grid](dy, gu, ff, dy.stride(0), gu.stride(0),
                                         BLOCK=_PACKED_BLOCK, num_warps=4)
    else:
        # The reference computes in fp32 like the kernel, then writes over the buffer.
        gate, up = gu[:, :ff], gu[:, ff:]
        g, u, d = gate.float(), up.float(), dy.float()
        sig = torch.sigmoid(g)
        d_up = d * g * sig
        gate.copy_(d * u * sig * (1.0 + g * (1.0 - sig)))
        up.copy_(d_up)
    # Triton's writes are invisible to autograd; bump the version counter so a second use
    # of a saved `gu` (say, backward with retain_graph) fails loudly instead of reading grads.
    torch.autograd.graph.increment_version(gu)
    return gu


class FusedSwiGLUMLP(nn.Module):
    """A Llama-style gated MLP, `down(silu(gate(x)) * up(x))`, with the fused activation.

    It holds the original module's three projections (LoRA wrappers included), so state
    dict keys are unchanged.

    >>> from transformers import LlamaConfig
    >>> from transformers.models.llama.modeling_llama import LlamaMLP
    >>> old = LlamaMLP(LlamaConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2))
    >>> new = FusedSwiGLUMLP.from_module(old)
    >>> new.gate_proj is old.gate_proj
    True
    """

    def __init__(self, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module):
        super().__init__()
        self.gate_proj = gate_proj
        self.up_proj = up_proj
        self.down_proj = down_proj

    @classmethod
    def from_module(cls, module: nn.Module):
        """Build from a gated MLP whose activation is SiLU; None for any other MLP."""
        act = getattr(module, 'act_fn', None)
        if not all(hasattr(module, n) for n in ('gate_proj', 'up_proj', 'down_proj')):
            return None
        if not isinstance(act, SILU_TYPES):
            return None
        return cls(module.gate_proj, module.up_proj, module.down_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))
