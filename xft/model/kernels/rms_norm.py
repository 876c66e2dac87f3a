"""RMSNorm as one Triton kernel per direction (forward, backward), with a torch reference.

The math is Llama's: normalize in fp32, round to the input dtype, then multiply by the weight,
so `rms_norm(x, w, eps)` equals `LlamaRMSNorm` bit for bit in fp32 and to rounding in bf16.
The eager version launches about eight kernels and keeps the fp32 copy of `x` for backward;
the fused one launches one each way and keeps only `x` and the per-row 1/rms.
"""
import torch
from torch import nn

from .backend import tl, triton, use_triton


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm in plain torch (the CPU path and the tests' reference).

    >>> rms_norm_reference(torch.tensor([[3.0, 4.0]]), torch.ones(2), 0.0)
    tensor([[0.8485, 1.1314]])
    """
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


if triton is not None:

    @triton.jit
    def _rms_norm_fwd(X, W, Y, RSTD, stride_x, stride_y, n_cols, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        tl.store(RSTD + row, rstd)
        # Round the normalized row to the input dtype before the weight, as Llama does.
        xhat = (x * rstd).to(X.dtype.element_ty).to(tl.float32)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + row * stride_y + cols, (w * xhat).to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _rms_norm_bwd(DY, X, W, RSTD, DX, stride_dy, stride_x, stride_dx, n_cols,
                      BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        xhat = x * rstd
        g = dy * w
        # d/dx of x*rstd(x): rstd * (g - xhat * mean(g * xhat))
        c = tl.sum(g * xhat, axis=0) / n_cols
        tl.store(DX + row * stride_dx + cols, ((g - xhat * c) * rstd).to(DX.dtype.element_ty),
                 mask=mask)


def _launch_config(n_cols: int):
    block = triton.next_power_of_2(n_cols)
    return block, min(max(block // 256, 1), 16)


class _RMSNormFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        out_dtype = torch.promote_types(x.dtype, weight.dtype)
        y = torch.empty(x2.shape, dtype=out_dtype, device=x.device)
        rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
        block, warps = _launch_config(x2.shape[1])
        _rms_norm_fwd[(x2.shape[0],)](x2, weight, y, rstd, x2.stride(0), y.stride(0),
                                      x2.shape[1], eps, BLOCK=block, num_warps=warps)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = shape
        return y.view(*shape[:-1], shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dy2 = dy.reshape(-1, x2.shape[1])
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x2)
            block, warps = _launch_config(x2.shape[1])
            _rms_norm_bwd[(x2.shape[0],)](dy2, x2, weight, rstd, dx, dy2.stride(0), x2.stride(0),
                                          dx.stride(0), x2.shape[1], BLOCK=block,
                                          num_warps=warps)
            dx = dx.view(ctx.shape)
        if ctx.needs_input_grad[1]:
            # Only full fine-tuning trains norms; a torch reduction is fast enough there.
            xhat = (x2.float() * rstd[:, None]).to(x2.dtype)
            dw = (dy2.float() * xhat.float()).sum(0).to(weight.dtype)
        return dx, dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama RMSNorm: fused Triton kernels on CUDA, `rms_norm_reference` elsewhere.

    >>> rms_norm(torch.tensor([[3.0, 4.0]]), torch.ones(2), 0.0)
    tensor([[0.8485, 1.1314]])
    """
    if use_triton(x, weight):
        return _RMSNormFn.apply(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


class FusedRMSNorm(nn.Module):
    """Drop-in for a Llama-style RMSNorm that keeps the original's `weight` parameter.

    The parameter object is shared, not copied, so state dict keys and any optimizer
    reference stay valid.

    >>> from transformers.models.llama.modeling_llama import LlamaRMSNorm
    >>> old = LlamaRMSNorm(8, eps=1e-6)
    >>> FusedRMSNorm.from_module(old).weight is old.weight
    True
    """

    def __init__(self, weight: nn.Parameter, eps: float):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps

    @classmethod
    def from_module(cls, module: nn.Module) -> 'FusedRMSNorm':
        eps = getattr(module, 'variance_epsilon', getattr(module, 'eps', None))
        if eps is None:
            raise ValueError(f'{type(module).__name__} has no variance_epsilon/eps attribute')
        return cls(module.weight, float(eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f'{tuple(self.weight.shape)}, eps={self.variance_epsilon}'
