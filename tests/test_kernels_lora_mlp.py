"""Fused LoRA MLP: same output, input grad and LoRA grads as peft's LlamaMLP (plain and 4-bit
bases, fp32 and bf16 autocast), same state dict keys, restorable, refuses what it cannot
compute; the packed SwiGLU helpers equal the plain reference."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.nn import functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from xft.model.kernels import (FusedLoRALinear, FusedLoRAMLP, restore_modules, swap_modules,
                               swiglu_packed, swiglu_packed_backward_, swiglu_reference)

HIDDEN, FFN = 24, 40  # odd-ish sizes: nothing lines up with a power of two
PROJ = ['gate_proj', 'up_proj', 'down_proj']


class Holder(nn.Module):
    """A parent for the MLP, so swap_modules has a module to replace it in."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        return self.mlp(x)


def quantize_4bit(linear):
    bnb = pytest.importorskip('bitsandbytes')
    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                          compute_dtype=torch.float32, quant_type='nf4')
    q.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False,
                                 quant_type='nf4')
    q.weight = q.weight._quantize('cpu')  # packed NF4, as loading to a device does
    q.support_avx512bf16_for_cpu = False
    return q


def lora_mlp_model(seed=0, four_bit=False, dropout=0.0, targets=PROJ):
    torch.manual_seed(seed)
    mlp = LlamaMLP(LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN,
                               num_attention_heads=2))
    if four_bit:
        for name in PROJ:
            setattr(mlp, name, quantize_4bit(getattr(mlp, name)))
    # Different ranks and scalings per projection, so the gate/up split can't hide a mix-up.
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets,
                        rank_pattern={'up_proj': 3},
                        alpha_pattern={'down_proj': 5} if 'down_proj' in targets else {})
    model = get_peft_model(Holder(mlp), config)
    for name, param in model.named_parameters():
        if 'lora_B' in name:  # peft starts B at zero; a nonzero B tests the whole product
            param.data.normal_(std=0.5)
    return model


def mlp_of(model):
    return model.base_model.model.mlp


def grads(model):
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def run(model, x, autocast=False):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    torch.manual_seed(1)
    y.float().backward(torch.randn(y.shape))
    return y, x.grad, grads(model)


def close(actual, expected, tol, name=''):
    """Max error within `tol` of the tensor's largest entry: bf16 errors scale with it."""
    err = (actual.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item()
    assert err <= tol * max(scale, 1.0), f'{name}: max error {err} vs scale {scale}'


def assert_same(ref, fused, x, tol, autocast=False):
    y_ref, dx_ref, g_ref = run(ref, x, autocast)
    y, dx, g = run(fused, x, autocast)
    assert y.dtype == y_ref.dtype and dx.dtype == x.dtype
    close(y, y_ref, tol, 'output')
    close(dx, dx_ref, tol, 'input grad')
    assert set(g) == set(g_ref) and len(g) == 6
    for name in g_ref:
        assert g[name].dtype == torch.float32, name  # the fp32 master copy's dtype
        close(g[name], g_ref[name], tol, name)


@pytest.mark.parametrize('then_fuse_layers', [False, True])
def test_matches_peft_mlp_fp32(then_fuse_layers):
    ref, fused = lora_mlp_model(), lora_mlp_model()
    keys = list(fused.state_dict())
    replaced = swap_modules(fused, LlamaMLP, FusedLoRAMLP.from_module)
    assert [name for name, _ in replaced] == ['base_model.model.mlp']
    if then_fuse_layers:  # what apply_fast_path does next: the layers inside are swapped too
        assert len(swap_modules(fused, type(ref.base_model.model.mlp.up_proj),
                                FusedLoRALinear.from_module)) == 3
        assert isinstance(mlp_of(fused).down_proj, FusedLoRALinear)
    assert list(fused.state_dict()) == keys
    assert_same(ref, fused, torch.randn(2, 7, HIDDEN), tol=1e-6)


def test_matches_peft_mlp_bf16_autocast():
    ref, fused = lora_mlp_model(), lora_mlp_model()
    swap_modules(fused, LlamaMLP, FusedLoRAMLP.from_module)
    y, _, _ = run(fused, torch.randn(3, HIDDEN), autocast=True)
    assert y.dtype == torch.bfloat16
    # peft rounds at other points (fp32 adapter, bf16 base); bf16 keeps 8 bits of mantissa,
    # so a few units in the last place of the largest entry.
    assert_same(ref, fused, torch.randn(2, 5, HIDDEN), tol=2e-2, autocast=True)


def test_matches_peft_mlp_with_4bit_base():
    ref, fused = lora_mlp_model(four_bit=True), lora_mlp_model(four_bit=True)
    assert len(swap_modules(fused, LlamaMLP, FusedLoRAMLP.from_module)) == 1
    assert_same(ref, fused, torch.randn(2, 5, HIDDEN), tol=1e-5)


def test_restore_gives_back_the_peft_mlp():
    model = lora_mlp_model()
    original = mlp_of(model)
    layers = [getattr(original, n) for n in PROJ]
    replaced = swap_modules(model, LlamaMLP, FusedLoRAMLP.from_module)
    assert [getattr(mlp_of(model), n) for n in PROJ] == layers  # shared, not copied
    restore_modules(model, replaced)
    assert mlp_of(model) is original and [getattr(original, n) for n in PROJ] == layers


def test_refuses_what_it_cannot_compute():
    assert FusedLoRAMLP.from_module(mlp_of(lora_mlp_model(dropout=0.1))) is not None  # replayable
    assert FusedLoRAMLP.from_module(mlp_of(lora_mlp_model(targets=['gate_proj', 'up_proj']))) is None
    two = lora_mlp_model()
    two.add_adapter('other', LoraConfig(r=2, target_modules=PROJ))
    for layer in (getattr(mlp_of(two), n) for n in PROJ):
        layer.set_adapter(['default', 'other'])
    assert FusedLoRAMLP.from_module(mlp_of(two)) is None
    gelu = lora_mlp_model()
    mlp_of(gelu).act_fn = nn.GELU()
    assert FusedLoRAMLP.from_module(mlp_of(gelu)) is None
    assert FusedLoRAMLP.from_module(mlp_of(lora_mlp_model())) is not None


def test_backward_runs_once():
    """gu is overwritten by its grads; a second backward must fail, not read grads."""
    model = lora_mlp_model()
    swap_modules(model, LlamaMLP, FusedLoRAMLP.from_module)
    y = model(torch.randn(3, HIDDEN))
    y.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        y.sum().backward()


def packed_case(dtype, device='cpu', tokens=7, ff=37):
    torch.manual_seed(0)
    gu = torch.randn(tokens, 2 * ff, dtype=dtype, device=device)
    dy = torch.randn(tokens, ff, dtype=dtype, device=device)
    g = gu[:, :ff].clone().requires_grad_(True)
    u = gu[:, ff:].clone().requires_grad_(True)
    y_ref = swiglu_reference(g.float(), u.float())
    y_ref.backward(dy.float())
    return gu, dy, y_ref, torch.cat([g.grad, u.grad], dim=1).float()


def test_packed_swiglu_matches_reference_and_autograd():
    gu, dy, y_ref, dgu_ref = packed_case(torch.float32)
    torch.testing.assert_close(swiglu_packed(gu), y_ref)
    out = swiglu_packed_backward_(dy, gu)
    assert out is gu  # written in place
    torch.testing.assert_close(gu, dgu_ref)
    with pytest.raises(ValueError):
        swiglu_packed(torch.zeros(3, 5))  # no even split into gate and up


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device (Triton)')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_packed_swiglu_triton_matches_reference(dtype):
    gu, dy, y_ref, dgu_ref = packed_case(dtype, 'cuda', tokens=129, ff=1037)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(swiglu_packed(gu).float(), y_ref, **tol)
    swiglu_packed_backward_(dy, gu)
    torch.testing.assert_close(gu.float(), dgu_ref, **tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device (Triton)')
def test_fused_mlp_on_cuda_matches_peft():
    ref, fused = lora_mlp_model().cuda(), lora_mlp_model().cuda()
    swap_modules(fused, LlamaMLP, FusedLoRAMLP.from_module)
    x = torch.randn(2, 33, HIDDEN, device='cuda')
    for model in (ref, fused):
        y = model(x.clone().requires_grad_(True))
        y.square().sum().backward()
    torch.testing.assert_close(fused(x), ref(x), atol=1e-4, rtol=1e-4)
    g_ref, g = grads(ref), grads(fused)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], atol=1e-3, rtol=1e-3, msg=name)
