"""RMSNorm kernel module: equal to transformers' LlamaRMSNorm on CPU (the torch fallback),
forward and backward, and swapped into a model by instance."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from xft.model.kernels import FusedRMSNorm, restore_modules, rms_norm_reference, swap_modules


@pytest.mark.parametrize('dtype,atol', [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_matches_llama_rmsnorm_forward_and_backward(dtype, atol):
    torch.manual_seed(0)
    ref = LlamaRMSNorm(24, eps=1e-5).to(dtype)
    ref.weight.data.normal_()
    fused = FusedRMSNorm.from_module(ref)
    x = torch.randn(3, 5, 24, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref, y = ref(x), fused(x2)
    assert y.dtype == y_ref.dtype
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=0)
    grad = torch.randn_like(y)
    y_ref.backward(grad)
    ref_weight_grad = ref.weight.grad.clone()
    ref.weight.grad = None
    y.backward(grad)
    torch.testing.assert_close(x2.grad, x.grad, atol=atol, rtol=0)
    torch.testing.assert_close(fused.weight.grad, ref_weight_grad, atol=atol * 10, rtol=0)


def test_reference_is_scale_invariant_rms():
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0]]) * 7
    assert torch.allclose(rms_norm_reference(x, torch.ones(4), 0.0), x / 7)


def test_swap_replaces_every_norm_and_keeps_outputs_and_keys():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (1, 7))
    before = model(input_ids=ids).logits
    keys = list(model.state_dict())
    replaced = swap_modules(model, LlamaRMSNorm, FusedRMSNorm.from_module)
    assert len(replaced) == 2 * 2 + 1  # two per layer plus the final norm
    assert not any(isinstance(m, LlamaRMSNorm) for m in model.modules())
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(input_ids=ids).logits, before)
    restore_modules(model, replaced)
    assert sum(isinstance(m, LlamaRMSNorm) for m in model.modules()) == 5
