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


_BLOCK = 2048


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
