"""Replayable LoRA adapter dropout (xft.model.kernels.dropout) on the CPU.

- the counter-based masks: keep rate, independence across adapters, seeds, rows and columns,
  a block of rows equal to the same rows of the whole mask;
- the fused functions with dropout (linear, q/k/v, MLP; fp32 and a 4-bit base) equal peft's
  modules given the same masks (injected through a test-only dropout module);
- backward regenerates the forward's masks: recomputation (checkpointing) gives the grads of
  the plain fast path, and keeps no more tensors than the dropout-free function;
- the expected loss over many seeds equals peft's (torch's dropout) within 4.5 standard
  errors, and that test can tell dropout from no dropout.
The graphs' replay with dropout is in test_kernels_graphs.py; exact resume with dropout in
test_faults.py and test_resume_exact.py (their reference run uses lora_dropout=0.1).
"""
import math
import os

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP

from xft.model.fast_path import apply_fast_path, causal_lm_loss
from xft.model.kernels import FusedLoRALinear, FusedLoRAMLP, swap_modules
from xft.model.kernels.dropout import (AdapterDropout, DropoutSeed, dropped, dropped_reference,
                                       keep_mask)
from xft.model.kernels.lora_linear import lora_parts
from xft.model.kernels.lora_projections import lora_projections

from test_kernels_lora_mlp import FFN, HIDDEN, PROJ, close, lora_mlp_model, mlp_of, quantize_4bit
from test_kernels_lora_projections import WIDTHS, peft_projections

P = 0.3


def seeded(value=None):
    seed = DropoutSeed()
    if value is None:
        seed.advance()
    else:
        seed.value = value
    return seed


def corr(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


# ------------------------------------------------------------------------------------------
# the masks
# ------------------------------------------------------------------------------------------
def test_masks_keep_one_minus_p_independently_per_adapter_seed_row_and_column():
    seed = torch.tensor([2**40 + 12345])
    rows, cols = 512, 1024
    n = rows * cols
    mask = keep_mask(rows, cols, seed, salt=0, p=0.1).float()
    # Binomial(n, 0.9): 5 standard deviations.
    assert abs(mask.mean().item() - 0.9) < 5 * math.sqrt(0.09 / n)
    bound = 5 / math.sqrt(n)  # |correlation| of independent masks, 5 standard errors
    assert abs(corr(mask, keep_mask(rows, cols, seed, salt=1, p=0.1))) < bound
    assert abs(corr(mask, keep_mask(rows, cols, seed + 1, salt=0, p=0.1))) < bound
    assert abs(corr(mask[:, 1:], mask[:, :-1])) < bound  # neighbouring features
    assert abs(corr(mask[1:], mask[:-1])) < bound  # neighbouring tokens
    # A block of rows (the MLP drops h a block at a time) is the same rows of the whole mask.
    assert torch.equal(keep_mask(37, cols, seed, 0, 0.1, row_offset=100).float(), mask[100:137])
    assert keep_mask(4, 8, seed, 0, 0.0).all() and not keep_mask(4, 8, seed, 0, 1.0).any()


def test_the_cpu_mask_has_the_bits_of_the_device_reference():
    """keep_mask computes CPU masks in numpy uint32 and device masks in int64 torch ops (what
    a GPU without Triton runs): the same bits."""
    from xft.model.kernels.dropout import _keep_mask_torch
    for rows, cols, seed_value, salt, offset in [(3, 1000, 2**40 + 17, 7, 0), (17, 37, 5, 0, 3),
                                                 (64, 4096, 2**61 + 1, 123, 1000)]:
        seed = torch.tensor([seed_value])
        assert torch.equal(keep_mask(rows, cols, seed, salt, 0.1, offset),
                           _keep_mask_torch(rows, cols, seed, salt, 0.1, offset))


def test_dropped_scales_kept_elements_and_accumulates():
    seed = torch.tensor([99])
    x = torch.randn(6, 50)
    mask = keep_mask(6, 50, seed, 4, P)
    torch.testing.assert_close(dropped(x, seed, 4, P), x * mask / (1 - P))
    acc = torch.ones(6, 50)
    dropped(x, seed, 4, P, scale=2.0, out=acc, accumulate=True)
    torch.testing.assert_close(acc, 1 + 2 * x * mask / (1 - P))
    y = x.clone()
    dropped(y, seed, 4, P, out=y)  # in place
    torch.testing.assert_close(y, x * mask / (1 - P))


def test_seed_advances_from_torchs_generator_and_reaches_every_device_copy():
    seed = DropoutSeed()
    copy = seed.tensor(torch.device('cpu'))
    torch.manual_seed(7)
    seed.advance()
    first = int(copy)
    torch.manual_seed(7)
    seed.advance()
    assert int(copy) == first == seed.value  # the run's seed decides, written in place
    seed.advance()
    assert int(copy) != first


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get('TRITON_INTERPRET') == '1'),
                    reason='needs CUDA, or TRITON_INTERPRET=1 with triton installed')
def test_triton_kernel_gives_the_reference_bits():
    pytest.importorskip('triton')
    from xft.model.kernels.dropout import dropped_pair_reference, dropped_pair_triton, dropped_triton
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    exact = dict(rtol=0, atol=0)
    for rows, cols, offset in [(3, 1000, 0), (17, 4096, 5), (2, 37, 1000)]:
        seed = torch.tensor([2**61 + rows], device=device)
        x = torch.randn(rows, cols, device=device)
        got = dropped_triton(x, seed, 11, P, scale=0.5, row_offset=offset)
        torch.testing.assert_close(got, dropped_reference(x, seed, 11, P, 0.5, row_offset=offset), **exact)
        # The backward pair: dropped x, and the dropped term in place or added onto out.
        t = torch.randn(rows, cols, device=device)
        t_ref = t.clone()
        torch.testing.assert_close(dropped_pair_triton(x, t, seed, 1, P, 2.0),
                                   dropped_pair_reference(x, t_ref, seed, 1, P, 2.0), **exact)
        torch.testing.assert_close(t, t_ref, **exact)
        out, out_ref = torch.ones_like(x), torch.ones_like(x)
        dropped_pair_triton(x, t, seed, 1, P, 2.0, out)
        dropped_pair_reference(x, t, seed, 1, P, 2.0, out_ref)
        torch.testing.assert_close(out, out_ref, **exact)


# ------------------------------------------------------------------------------------------
# the fused functions against peft with the same masks
# ------------------------------------------------------------------------------------------
class FixedMask(nn.Module):
    """Test-only dropout for peft's `lora_dropout` slot: applies a given keep mask."""

    def __init__(self, mask, p):
        super().__init__()
        self.mask, self.p = mask, p

    def forward(self, x):
        return x * self.mask.reshape(x.shape).to(x.dtype) / (1 - self.p)


def inject(layer, rows, cols, seed, salt):
    layer.lora_dropout['default'] = FixedMask(keep_mask(rows, cols, seed.tensor(torch.device('cpu')),
                                                        salt, P), P)


def run(forward, model, x, input_grad=True):
    """Outputs, input grad and parameter grads; `input_grad=False` is a layer whose input
    needs no grad (the first decoder layer's), where backward takes another branch."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(input_grad)
    outs = forward(x)
    outs = outs if isinstance(outs, tuple) else (outs, )
    gen = torch.Generator().manual_seed(1)
    sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs).backward()
    return outs, x.grad, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def assert_same(got, ref, tol):
    (outs, dx, grads), (outs_ref, dx_ref, grads_ref) = got, ref
    for out, out_ref in zip(outs, outs_ref):
        close(out, out_ref, tol, 'output')
    assert (dx is None) == (dx_ref is None)
    if dx is not None:
        close(dx, dx_ref, tol, 'input grad')
    assert set(grads) == set(grads_ref) and grads
    for name in grads_ref:
        close(grads[name], grads_ref[name], tol, name)


def single_lora(four_bit, dropout=P):
    torch.manual_seed(0)
    holder = nn.Module()
    lin = nn.Linear(HIDDEN, 10, bias=False)
    holder.proj = quantize_4bit(lin) if four_bit else lin
    holder.forward = lambda x: holder.proj(x)
    model = get_peft_model(holder, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                              target_modules=['proj']))
    for name, param in model.named_parameters():
        if 'lora_B' in name:
            param.data.normal_(std=0.5)
    return model


FOUR_BIT_AND_INPUT_GRAD = [(False, 1e-6, True), (True, 1e-5, True), (False, 1e-6, False)]


@pytest.mark.parametrize('four_bit,tol,input_grad', FOUR_BIT_AND_INPUT_GRAD)
def test_fused_linear_with_dropout_equals_peft_with_the_same_mask(four_bit, tol, input_grad):
    ref, fused = single_lora(four_bit), single_lora(four_bit)
    seed = seeded()
    swap_modules(fused, type(fused.base_model.model.proj),
                 lambda m: FusedLoRALinear.from_module(m, dropout_seed=seed))
    layer = fused.base_model.model.proj
    assert isinstance(layer, FusedLoRALinear) and layer.dropout_p == P
    x = torch.randn(2, 7, HIDDEN)
    inject(ref.base_model.model.proj, 14, HIDDEN, seed, layer.dropout_salt)
    assert_same(run(fused, fused, x, input_grad), run(ref, ref, x, input_grad), tol)


@pytest.mark.parametrize('four_bit,tol,input_grad', FOUR_BIT_AND_INPUT_GRAD)
def test_fused_qkv_with_dropout_equals_three_peft_layers_with_their_masks(four_bit, tol, input_grad):
    ref, fused = peft_projections(four_bit, dropout=P), peft_projections(four_bit, dropout=P)
    seed = seeded()
    layers = [getattr(fused.base_model.model, n) for n in WIDTHS]
    parts = [lora_parts(layer) for layer in layers]
    assert [part.dropout_p for part in parts] == [P] * 3
    dropouts = [AdapterDropout(P, seed, seed.salt(layer)) for layer in layers]
    assert len({d.salt for d in dropouts}) == 3  # each adapter its own mask

    def forward(x):
        adapters = [(l.lora_A['default'].weight, l.lora_B['default'].weight) for l in layers]
        return lora_projections(x, adapters, [l.base_layer for l in layers],
                                [part.scaling for part in parts], dropouts)

    x = torch.randn(2, 5, HIDDEN)
    for name, d in zip(WIDTHS, dropouts):
        inject(getattr(ref.base_model.model, name), 10, HIDDEN, seed, d.salt)
    assert_same(run(forward, fused, x, input_grad), run(ref, ref, x, input_grad), tol)


@pytest.mark.parametrize('four_bit,tol,input_grad', FOUR_BIT_AND_INPUT_GRAD)
def test_fused_mlp_with_dropout_equals_peft_mlp_with_its_masks(four_bit, tol, input_grad):
    ref, fused = lora_mlp_model(four_bit=four_bit, dropout=P), lora_mlp_model(four_bit=four_bit, dropout=P)
    seed = seeded()
    swap_modules(fused, LlamaMLP, lambda m: FusedLoRAMLP.from_module(m, dropout_seed=seed))
    mlp = mlp_of(fused)
    assert isinstance(mlp, FusedLoRAMLP) and mlp.dropout_p == (P, P, P)
    salts = [seed.salt(getattr(mlp, n)) for n in PROJ]
    x = torch.randn(2, 7, HIDDEN)
    # gate and up drop the MLP input x, down drops its own input h (tokens x ffn).
    for name, salt, width in zip(PROJ, salts, (HIDDEN, HIDDEN, FFN)):
        inject(getattr(mlp_of(ref), name), 14, width, seed, salt)
    assert_same(run(fused, fused, x, input_grad), run(ref, ref, x, input_grad), tol)


def test_the_mlp_drops_h_a_block_of_rows_at_a_time_with_the_whole_mask(monkeypatch):
    """More tokens than one block of h: the blocks' masks are the rows of the whole mask."""
    import importlib
    monkeypatch.setattr(importlib.import_module('xft.model.kernels.lora_mlp'), '_DOWN_DROPOUT_ELEMENTS',
                        4 * FFN)  # blocks of 4 rows
    ref, fused = lora_mlp_model(dropout=P), lora_mlp_model(dropout=P)
    seed = seeded()
    swap_modules(fused, LlamaMLP, lambda m: FusedLoRAMLP.from_module(m, dropout_seed=seed))
    mlp = mlp_of(fused)
    for name, width in zip(PROJ, (HIDDEN, HIDDEN, FFN)):
        inject(getattr(mlp_of(ref), name), 11, width, seed, seed.salt(getattr(mlp, name)))
    x = torch.randn(11, HIDDEN)
    assert_same(run(fused, fused, x), run(ref, ref, x), 1e-6)


def test_dropout_is_off_in_eval_and_each_training_call_draws_anew():
    model = single_lora(False)
    swap_modules(model, type(model.base_model.model.proj), FusedLoRALinear.from_module)
    layer = model.base_model.model.proj  # built without a seed: owns one, advances per call
    x = torch.randn(3, HIDDEN)
    eval_out = layer.eval()(x)
    assert torch.equal(eval_out, layer(x))
    layer.train()
    first, second = layer(x), layer(x)
    assert not torch.allclose(first, eval_out) and not torch.allclose(first, second)


# ------------------------------------------------------------------------------------------
# memory: nothing more kept than without dropout
# ------------------------------------------------------------------------------------------
def saved_bytes(fn):
    """Bytes of the distinct tensors autograd keeps for backward while `fn()` runs."""
    kept = {}

    def pack(t):
        kept[(t.data_ptr(), t.shape, t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(kept.values()), out


@pytest.mark.parametrize('which', ['linear', 'mlp'])
def test_dropout_keeps_no_more_for_backward_than_no_dropout(which):
    x = torch.randn(64, HIDDEN, requires_grad=True)
    sizes = []
    for p in (0.0, P):
        if which == 'linear':
            model = single_lora(False, dropout=p)
            swap_modules(model, type(model.base_model.model.proj), FusedLoRALinear.from_module)
        else:
            model = lora_mlp_model(dropout=p)
            swap_modules(model, LlamaMLP, FusedLoRAMLP.from_module)
        size, out = saved_bytes(lambda: model(x))
        out.sum().backward()
        sizes.append(size)
    assert sizes[0] == sizes[1] and sizes[0] > 0


# ------------------------------------------------------------------------------------------
# recomputation and the whole model
# ------------------------------------------------------------------------------------------
TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']


def lora_llama(path, dropout, b_std=0.02):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                             target_modules=TARGETS))
    for name, param in model.named_parameters():
        if 'lora_B' in name:
            param.data.normal_(std=b_std)
    model.train()
    return model


def loss_and_grads(model, ids, torch_seed):
    torch.manual_seed(torch_seed)  # the dropout seed is drawn from torch's generator
    loss, _ = causal_lm_loss(model, ids, ids)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_recomputation_regenerates_the_forwards_masks(tiny_llama_dir):
    """Checkpointed layers recompute their forward in backward: with the masks regenerated
    from the same seed, loss and grads equal the fast path without checkpointing."""
    plain, checkpointed = lora_llama(tiny_llama_dir, 0.1), lora_llama(tiny_llama_dir, 0.1)
    state = apply_fast_path(plain, gradient_checkpointing=False)
    assert state.dropout_hook is not None and len(state.lora_mlps) == 2
    assert state.summary().endswith('adapter dropout with replayable masks')
    assert apply_fast_path(checkpointed).checkpointed_layers == 2
    ids = torch.randint(0, plain.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    for step in range(2):
        loss_ref, grads_ref = loss_and_grads(plain, ids, step)
        loss, grads = loss_and_grads(checkpointed, ids, step)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-6)
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
    # The control: the seed moved between forward and backward changes the grads.
    torch.manual_seed(0)
    loss, _ = causal_lm_loss(checkpointed, ids, ids)
    state_seed = next(m.dropout_seed for m in checkpointed.modules() if isinstance(m, FusedLoRALinear))
    state_seed.advance()
    loss.backward()
    moved = [p.grad for p in checkpointed.parameters() if p.requires_grad]
    _, grads_ref = loss_and_grads(plain, ids, 0)
    assert max((g - r).abs().max().item() for g, r in zip(moved, grads_ref)) > 1e-5


def test_restore_removes_the_seed_hook(tiny_llama_dir):
    model = lora_llama(tiny_llama_dir, 0.1)
    state = apply_fast_path(model)
    seed = state.dropout_seed
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    causal_lm_loss(model, ids, ids)
    value = seed.value
    with torch.no_grad():  # no grad: not a training forward, the seed stays
        causal_lm_loss(model, ids, ids)
    assert seed.value == value
    state.restore(model)
    causal_lm_loss(model, ids, ids)
    assert seed.value == value and state.dropout_hook is None
    assert apply_fast_path(lora_llama(tiny_llama_dir, 0.0)).dropout_hook is None


def test_expected_loss_over_many_seeds_matches_peft(tiny_llama_dir):
    """E[loss] under the fused path's dropout equals peft's (torch's masks) within 4.5 standard
    errors of the difference; the same statistic separates dropout from no dropout."""
    n = 150
    peft_model = lora_llama(tiny_llama_dir, 0.3, b_std=1.0)
    fused = lora_llama(tiny_llama_dir, 0.3, b_std=1.0)
    apply_fast_path(fused, gradient_checkpointing=False)
    ids = torch.randint(0, fused.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    fused_losses, peft_losses = [], []
    for _ in range(n):
        with torch.enable_grad():  # a training forward (the seed advances); no backward needed
            fused_losses.append(causal_lm_loss(fused, ids, ids)[0].item())
        with torch.no_grad():
            peft_losses.append(peft_model(input_ids=ids, labels=ids).loss.item())
    f, q = torch.tensor(fused_losses, dtype=torch.float64), torch.tensor(peft_losses, dtype=torch.float64)
    stderr = math.sqrt(f.var() / n + q.var() / n)
    assert f.std() > 0.01 and q.std() > 0.01  # dropout changes the loss a lot at these weights
    assert abs(f.mean() - q.mean()) < 4.5 * stderr, (f.mean(), q.mean(), stderr)
    peft_model.eval()
    with torch.no_grad():
        no_dropout = peft_model(input_ids=ids, labels=ids).loss.item()
    assert abs(f.mean() - no_dropout) > 4.5 * f.std().item() / math.sqrt(n)  # the test can fail
