"""SwiGLU MLP module: equal to transformers' LlamaMLP on CPU, forward and backward."""
import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from xft.model.kernels import FusedSwiGLUMLP, swiglu, swiglu_reference


def test_mlp_matches_llama_mlp_forward_and_backward():
    torch.manual_seed(0)
    ref = LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2))
    fused = FusedSwiGLUMLP.from_module(ref)
    assert fused.up_proj is ref.up_proj  # shared, so state dict keys and params are unchanged
    x = torch.randn(2, 9, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref, y = ref(x), fused(x2)
    torch.testing.assert_close(y, y_ref)
    grad = torch.randn_like(y)
    y_ref.backward(grad)
    ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    ref.zero_grad(set_to_none=True)
    y.backward(grad)
    torch.testing.assert_close(x2.grad, x.grad)
    for name, param in fused.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name])


def test_only_silu_gated_mlps_are_taken():
    mlp = LlamaMLP(LlamaConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, hidden_act='gelu'))
    assert FusedSwiGLUMLP.from_module(mlp) is None
    assert FusedSwiGLUMLP.from_module(nn.Linear(2, 2)) is None


def test_function_values():
    g = torch.tensor([-2.0, 0.0, 3.0])
    u = torch.tensor([1.0, 5.0, -2.0])
    expected = g * torch.sigmoid(g) * u
    torch.testing.assert_close(swiglu(g, u), expected)
    torch.testing.assert_close(swiglu_reference(g, u), expected)
