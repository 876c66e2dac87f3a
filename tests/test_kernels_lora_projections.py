"""Fused q/k/v LoRA projections: same outputs, input grad and LoRA grads as three peft LoRA
layers on one input (plain and 4-bit bases, fp32 and bf16 autocast); the attention module
uses them only when all three layers qualify."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention

from xft.model.kernels import FusedLoRALinear, FusedRoPEAttention, swap_modules
from xft.model.kernels.lora_linear import lora_parts
from xft.model.kernels.lora_projections import lora_projections

from test_kernels_lora_mlp import close, quantize_4bit

HIDDEN = 24
WIDTHS = {'q': 24, 'k': 8, 'v': 8}  # grouped-query shapes: k and v narrower than q


class ThreeProjections(nn.Module):

    def __init__(self, four_bit=False):
        super().__init__()
        for name, width in WIDTHS.items():
            lin = nn.Linear(HIDDEN, width, bias=False)
            setattr(self, name, quantize_4bit(lin) if four_bit else lin)

    def forward(self, x):
        return tuple(getattr(self, n)(x) for n in WIDTHS)


def peft_projections(four_bit=False, dropout=0.0):
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=list(WIDTHS),
                        rank_pattern={'k': 2}, alpha_pattern={'v': 3})
    model = get_peft_model(ThreeProjections(four_bit), config)
    for name, param in model.named_parameters():
        if 'lora_B' in name:
            param.data.normal_(std=0.5)
    return model


def fused_forward(model, x):
    layers = [getattr(model.base_model.model, n) for n in WIDTHS]
    parts = [lora_parts(layer) for layer in layers]
    adapters = [(l.lora_A['default'].weight, l.lora_B['default'].weight) for l in layers]
    return lora_projections(x, adapters, [l.base_layer for l in layers], [p.scaling for p in parts])


def run(forward, model, x, autocast):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        outs = forward(x)
    torch.manual_seed(1)
    loss = sum((o.float() * torch.randn(o.shape)).sum() for o in outs)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return outs, x.grad, grads


@pytest.mark.parametrize('four_bit,autocast,tol', [(False, False, 1e-6), (True, False, 1e-5),
                                                   (False, True, 2e-2)])
def test_matches_three_peft_layers(four_bit, autocast, tol):
    ref, fused = peft_projections(four_bit), peft_projections(four_bit)
    x = torch.randn(2, 5, HIDDEN)
    outs_ref, dx_ref, g_ref = run(ref, ref, x, autocast)
    outs, dx, g = run(lambda t: fused_forward(fused, t), fused, x, autocast)
    for out, out_ref in zip(outs, outs_ref):
        assert out.shape == out_ref.shape and out.dtype == out_ref.dtype
        close(out, out_ref, tol, 'output')
    close(dx, dx_ref, tol, 'input grad')
    assert set(g) == set(g_ref) and len(g) == 6
    for name in g_ref:
        assert g[name].dtype == torch.float32
        close(g[name], g_ref[name], tol, name)


def test_lora_parts_accepts_peft_and_fused_layers_with_and_without_dropout():
    layer = peft_projections().base_model.model.k
    assert lora_parts(layer) == ('default', 4.0, 0.0)  # lora_alpha 8 / rank 2 (rank_pattern)
    assert lora_parts(FusedLoRALinear.from_module(layer)) == ('default', layer.scaling['default'], 0.0)
    assert lora_parts(peft_projections(dropout=0.1).base_model.model.k) == ('default', 4.0, 0.1)


@pytest.mark.parametrize('targets,dropout,fused', [(['q_proj', 'k_proj', 'v_proj'], 0.0, True),
                                                   (['q_proj', 'v_proj'], 0.0, False),
                                                   (['q_proj', 'k_proj', 'v_proj'], 0.1, True)])
def test_attention_fuses_qkv_only_when_all_three_qualify(targets, dropout, fused):
    cfg = LlamaConfig(hidden_size=HIDDEN, num_attention_heads=3, num_key_value_heads=1,
                      intermediate_size=8)
    holder = nn.Module()
    holder.attn = LlamaAttention(cfg, layer_idx=0)
    model = get_peft_model(holder, LoraConfig(r=2, lora_dropout=dropout, target_modules=targets))
    swap_modules(model, LlamaAttention, FusedRoPEAttention.from_module)
    attn = model.base_model.model.attn
    assert isinstance(attn, FusedRoPEAttention)
    assert (attn.qkv_adapter == 'default') is fused


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device (Triton)')
def test_attention_with_fused_qkv_on_cuda_matches_peft():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=8, attn_implementation='sdpa')

    def build():
        torch.manual_seed(0)
        holder = nn.Module()
        holder.attn = LlamaAttention(cfg, layer_idx=0)
        model = get_peft_model(holder, LoraConfig(r=4, target_modules=['q_proj', 'k_proj',
                                                                       'v_proj', 'o_proj']))
        for name, param in model.named_parameters():
            if 'lora_B' in name:
                param.data.normal_(std=0.1)
        return model.cuda()

    ref, fused = build(), build()
    swap_modules(fused, LlamaAttention, FusedRoPEAttention.from_module)
    assert fused.base_model.model.attn.qkv_adapter == 'default'
    x = torch.randn(2, 37, 64, device='cuda')
    position_ids = torch.arange(37, device='cuda')[None].expand(2, -1)
    cos_sin = LlamaRotaryEmbedding(cfg).cuda()(x, position_ids)
    results = []
    for model in (ref, fused):
        inp = x.clone().requires_grad_(True)
        out = model.base_model.model.attn(inp, position_embeddings=cos_sin,
                                          attention_mask=None)[0]
        out.square().sum().backward()
        results.append((out, inp.grad, {n: p.grad for n, p in model.named_parameters()
                                        if p.requires_grad}))
    (out_ref, dx_ref, g_ref), (out, dx, g) = results
    close(out, out_ref, 1e-4, 'output')
    close(dx, dx_ref, 1e-4, 'input grad')
    for name in g_ref:
        close(g[name], g_ref[name], 1e-4, name)
