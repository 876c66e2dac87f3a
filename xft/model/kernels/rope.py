"""Rotary position embedding (Llama's `rotate_half` convention) as one Triton kernel each
way, and the attention module that uses it.

transformers applies RoPE with about six kernels per tensor (two slices, a negation, a
concatenation, two products and a sum), each reading and writing the whole of q or k, and
then SDPA reads q and k transposed. The fused op reads the projection output once in its
(batch, tokens, heads, dim) layout and writes the rotated tensor directly in the (batch,
heads, tokens, dim) layout attention wants; backward applies the inverse rotation the same way.
"""
import torch
from torch import nn

from .backend import tl, triton, use_triton
from .dropout import NO_DROPOUT, DropoutSeed
from .lora_linear import layer_dropout, lora_parts
from .lora_projections import lora_projections


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' RoPE of x (batch, tokens, heads, dim) with cos/sin (batch, tokens, dim),
    returned as (batch, heads, tokens, dim).

    >>> x = torch.tensor([[[[1.0, 0.0]]]])
    >>> rope_reference(x, torch.zeros(1, 1, 2), torch.ones(1, 1, 2))
    tensor([[[[0., 1.]]]])
    """
    x = x.transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


if triton is not None:

    @triton.jit
    def _rope_kernel(X, COS, SIN, Y, n_tokens, n_heads, sxb, sxt, sxh, scb, sct, syb, syt, syh,
                     HALF: tl.constexpr, BLOCK_H: tl.constexpr, INVERSE: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        b = pid // n_tokens
        t = pid % n_tokens
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, HALF)[None, :]
        mask = h < n_heads
        xp = X + b * sxb + t * sxt + h * sxh + d
        x1 = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(xp + HALF, mask=mask, other=0.0).to(tl.float32)
        cp = COS + b * scb + t * sct + d
        sp = SIN + b * scb + t * sct + d
        c1 = tl.load(cp).to(tl.float32)
        c2 = tl.load(cp + HALF).to(tl.float32)
        s1 = tl.load(sp).to(tl.float32)
        s2 = tl.load(sp + HALF).to(tl.float32)
        if INVERSE:  # the transpose of the rotation, for the gradient
            y1 = x1 * c1 + x2 * s2
            y2 = x2 * c2 - x1 * s1
        else:
            y1 = x1 * c1 - x2 * s1
            y2 = x2 * c2 + x1 * s2
        yp = Y + b * syb + t * syt + h * syh + d
        tl.store(yp, y1.to(Y.dtype.element_ty), mask=mask)
        tl.store(yp + HALF, y2.to(Y.dtype.element_ty), mask=mask)


def _launch(x, cos, sin, y, shape, x_strides, y_strides, inverse):
    """shape: (batch, tokens, heads, dim); strides of x and y given as (batch, token, head)."""
    batch, n_tokens, n_heads, dim = shape
    cos_batch_stride = cos.stride(0) if cos.shape[0] > 1 else 0  # one table for the batch
    _rope_kernel[(batch * n_tokens, )](
        x, cos, sin, y, n_tokens, n_heads, *x_strides, cos_batch_stride, cos.stride(1),
        *y_strides, HALF=dim // 2, BLOCK_H=triton.next_power_of_2(n_heads), INVERSE=inverse,
        num_warps=4)


class _RoPEFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, cos, sin):
        batch, n_tokens, n_heads, dim = x.shape
        cos, sin = cos.contiguous(), sin.contiguous()
        y = torch.empty(batch, n_heads, n_tokens, dim, dtype=x.dtype, device=x.device)
        _launch(x, cos, sin, y, x.shape, (x.stride(0), x.stride(1), x.stride(2)),
                (y.stride(0), y.stride(2), y.stride(1)), inverse=False)
        ctx.save_for_backward(cos, sin)
        ctx.x_meta = (x.shape, x.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        shape, dtype = ctx.x_meta
        dy = dy.contiguous()  # (batch, heads, tokens, dim)
        dx = torch.empty(shape, dtype=dtype, device=dy.device)  # (batch, tokens, heads, dim)
        _launch(dy, cos, sin, dx, shape, (dy.stride(0), dy.stride(2), dy.stride(1)),
                (dx.stride(0), dx.stride(1), dx.stride(2)), inverse=True)
        return dx, None, None


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of x (batch, tokens, heads, dim) -> (batch, heads, tokens, dim); fused on CUDA.

    >>> x = torch.tensor([[[[1.0, 0.0]]]])
    >>> rope(x, torch.zeros(1, 1, 2), torch.ones(1, 1, 2))
    tensor([[[[0., 1.]]]])
    """
    dim = x.shape[-1]
    if (use_triton(x, cos, sin) and x.stride(-1) == 1 and dim % 2 == 0
            and (dim // 2) & (dim // 2 - 1) == 0 and cos.shape[-1] == dim and cos.dim() == 3):
        return _RoPEFn.apply(x, cos, sin)
    return rope_reference(x, cos, sin)


class FusedRoPEAttention(nn.Module):
    """Llama attention with the fused RoPE, sharing the original's projections.

    Training forwards (no KV cache, a registered attention implementation such as sdpa or
    flash) run here; anything else (generation with a cache, eager attention) is handed to
    the original module, kept as an unregistered reference so state dict keys are unchanged.
    When q, k and v are LoRA layers with one shared adapter (peft's or `FusedLoRALinear`),
    they run as one function (`lora_projections`): one input-grad buffer instead of three,
    and one `x A^T` product when there is no adapter dropout. With dropout each adapter
    draws its own replayable mask from `dropout_seed` (the model's `DropoutSeed`; a module
    built without one owns a seed and advances it at each training call).
    """

    _COPIED = ('config', 'layer_idx', 'head_dim', 'num_key_value_groups', 'scaling',
               'attention_dropout', 'is_causal')

    def __init__(self, original: nn.Module, dropout_seed: DropoutSeed = None):
        super().__init__()
        for name in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
            setattr(self, name, getattr(original, name))
        for name in self._COPIED:
            setattr(self, name, getattr(original, name))
        object.__setattr__(self, '_original', original)
        # Decided once, like FusedLoRALinear's own checks: the layers' Python-side settings
        # don't change while training, and the forward then has no per-step branching.
        parts = [lora_parts(getattr(original, n)) for n in ('q_proj', 'k_proj', 'v_proj')]
        self.qkv_adapter = None
        if all(parts) and len({part.adapter for part in parts}) == 1:
            self.qkv_adapter = parts[0].adapter
            self.qkv_scalings = tuple(part.scaling for part in parts)
            self.qkv_dropout_p = tuple(part.dropout_p for part in parts)
        self.owns_seed = dropout_seed is None
        self.dropout_seed = DropoutSeed() if dropout_seed is None else dropout_seed

    @classmethod
    def from_module(cls, module: nn.Module, dropout_seed: DropoutSeed = None):
        needed = ('q_proj', 'k_proj', 'v_proj', 'o_proj') + cls._COPIED
        if not all(hasattr(module, n) for n in needed) or hasattr(module, 'q_norm'):
            return None
        return cls(module, dropout_seed)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        cache = kwargs.get('cache', kwargs.get('past_key_values'))
        impl = self.config._attn_implementation
        if cache is not None or position_embeddings is None or impl not in ALL_ATTENTION_FUNCTIONS:
            self._original.train(self.training)
            return self._original(hidden_states, position_embeddings=position_embeddings,
                                  attention_mask=attention_mask, **kwargs)
        kwargs.pop('cache', None)
        kwargs.pop('past_key_values', None)
        batch, n_tokens = hidden_states.shape[:2]
        q, k, v = self._qkv(hidden_states)
        q = q.view(batch, n_tokens, -1, self.head_dim)
        k = k.view(batch, n_tokens, -1, self.head_dim)
        v = v.view(batch, n_tokens, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        out, weights = ALL_ATTENTION_FUNCTIONS[impl](
            self, rope(q, cos, sin), rope(k, cos, sin), v, attention_mask,
            dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling,
            **kwargs)
        return self.o_proj(out.reshape(batch, n_tokens, -1).contiguous()), weights

    def _qkv(self, hidden_states):
        layers = (self.q_proj, self.k_proj, self.v_proj)
        if self.qkv_adapter is None:
            return tuple(layer(hidden_states) for layer in layers)
        adapter = self.qkv_adapter
        adapters = [(layer.lora_A[adapter].weight, layer.lora_B[adapter].weight) for layer in layers]
        dropouts = [layer_dropout(layer, adapter, p, self.dropout_seed)
                    for layer, p in zip(layers, self.qkv_dropout_p)]
        if self.owns_seed and any(d is not NO_DROPOUT for d in dropouts):
            self.dropout_seed.advance()
        return lora_projections(hidden_states, adapters, [layer.base_layer for layer in layers],
                                self.qkv_scalings, dropouts)
