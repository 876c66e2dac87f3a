"""Fused LoRA linear: same output and grads as peft's LoRA layer (plain and 4-bit base),
same state dict keys, and refuses layers it cannot compute exactly."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from xft.model.kernels import FusedLoRALinear, lora_linear, restore_modules, swap_modules
from xft.model.kernels.dropout import AdapterDropout, DropoutSeed


class TwoLinear(nn.Module):

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(12, 10, bias=True)
        self.out = nn.Linear(10, 6, bias=False)

    def forward(self, x):
        return self.out(torch.relu(self.q(x)))


def peft_model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    model = get_peft_model(TwoLinear(), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                   target_modules=['q', 'out']))
    for name, param in model.named_parameters():
        if 'lora_B' in name:  # peft starts B at zero; a nonzero B tests the whole product
            param.data.normal_()
    return model


def lora_layer_types():
    from peft.tuners.lora import LoraLayer
    return LoraLayer


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_matches_peft_forward_and_backward():
    ref, fused = peft_model(), peft_model()
    keys = list(fused.state_dict())
    replaced = swap_modules(fused, lora_layer_types(), FusedLoRALinear.from_module)
    assert [name.rsplit('.', 1)[-1] for name, _ in replaced] == ['q', 'out']
    assert list(fused.state_dict()) == keys
    x = torch.randn(3, 5, 12, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref, y = ref(x), fused(x2)
    torch.testing.assert_close(y, y_ref)
    y_ref.square().sum().backward()
    y.square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)
    ref_grads, fused_grads = grads(ref), grads(fused)
    assert set(ref_grads) == set(fused_grads) and len(ref_grads) == 4
    for name in ref_grads:
        # fp32, but summed in another order than peft's (the low-rank term comes first).
        torch.testing.assert_close(fused_grads[name], ref_grads[name], rtol=1e-5, atol=1e-5)
        assert fused_grads[name].dtype == torch.float32
    restore_modules(fused, replaced)
    assert not any(isinstance(m, FusedLoRALinear) for m in fused.modules())


def test_dropout_layers_match_peft_in_eval_and_have_exact_grads_in_training():
    ref, fused = peft_model(dropout=0.3), peft_model(dropout=0.3)
    assert len(swap_modules(fused, lora_layer_types(), FusedLoRALinear.from_module)) == 2
    x = torch.randn(3, 12)
    torch.testing.assert_close(fused.eval()(x), ref.eval()(x))  # no dropout in eval
    fused.train()
    layer = fused.base_model.model.q
    train_out = layer(x)
    assert not torch.allclose(train_out, layer.eval()(x))  # training drops adapter inputs
    layer.train()
    base = nn.Linear(6, 4).double()
    for p in base.parameters():
        p.requires_grad_(False)
    seed = DropoutSeed()
    seed.advance()
    dropout = AdapterDropout(0.4, seed, salt=5)

    def seeded(inp, a, b):  # the mask is a function of the seed: backward regenerates it
        return lora_linear(inp, a, b, base, 0.7, dropout)

    inputs = (torch.randn(5, 6, dtype=torch.float64, requires_grad=True),
              torch.randn(3, 6, dtype=torch.float64, requires_grad=True),
              torch.randn(4, 3, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(seeded, inputs)


def test_refuses_merged_layers():
    model = peft_model()
    model.base_model.model.q.merge()
    replaced = swap_modules(model, lora_layer_types(), FusedLoRALinear.from_module)
    assert [name.rsplit('.', 1)[-1] for name, _ in replaced] == ['out']


def test_bf16_autocast_computes_in_bf16_and_returns_fp32_grads():
    model = peft_model()
    swap_modules(model, lora_layer_types(), FusedLoRALinear.from_module)
    x = torch.randn(4, 12)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    lora_a = model.base_model.model.q.lora_A['default'].weight
    assert lora_a.grad is not None and lora_a.grad.dtype == torch.float32


def test_4bit_base_matches_peft_linear4bit():
    bnb = pytest.importorskip('bitsandbytes')

    def quantized(seed):
        torch.manual_seed(seed)
        lin = nn.Linear(64, 32, bias=False)
        q = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32,
                              quant_type='nf4')
        q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False,
                                     quant_type='nf4')
        q.weight = q.weight._quantize('cpu')  # packed NF4, as loading to a device does
        q.support_avx512bf16_for_cpu = False
        holder = nn.Module()
        holder.proj = q
        holder.forward = lambda x: holder.proj(x)
        model = get_peft_model(holder, LoraConfig(r=4, lora_alpha=8, target_modules=['proj']))
        for name, param in model.named_parameters():
            if 'lora_B' in name:
                param.data.normal_()
        return model

    ref, fused = quantized(1), quantized(1)
    replaced = swap_modules(fused, lora_layer_types(), FusedLoRALinear.from_module)
    assert len(replaced) == 1
    x = torch.randn(5, 64)
    y_ref, y = ref(x), fused(x)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    y_ref.sum().backward()
    y.sum().backward()
    for (name, g_ref), g in zip(grads(ref).items(), grads(fused).values()):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4, msg=name)
