"""The fast path on the tiny Llama: same loss and LoRA grads as the plain peft path, modules
restorable, trainable weights unchanged in name, and the chunked loss equal to torch's."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.nn import functional as F
from transformers import AutoModelForCausalLM

from xft.model.fast_path import apply_fast_path, causal_lm_loss
from xft.model.kernels import (FusedLoRALinear, FusedLoRAMLP, FusedRMSNorm, FusedRoPEAttention,
                               FusedSwiGLUMLP)
from xft.model.loss import linear_cross_entropy
from xft.utils.constants import IGNORE_INDEX

TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']


def lora_llama(path, seed=0):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                             target_modules=TARGETS))
    for name, param in model.named_parameters():
        if 'lora_B' in name:
            param.data.normal_(std=0.02)
    model.train()
    return model


def batch(vocab, seed=0):
    torch.manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 12))
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX  # a prompt that carries no loss
    return ids, labels


def lora_grads(model):
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_loss_and_lora_grads_match_the_plain_path(tiny_llama_dir):
    plain, fast = lora_llama(tiny_llama_dir), lora_llama(tiny_llama_dir)
    plain.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    trainable_before = [n for n, p in fast.named_parameters() if p.requires_grad]
    state = apply_fast_path(fast)
    n_layers = fast.config.num_hidden_layers
    assert len(state.lora) == 7 * n_layers
    assert len(state.norms) == 2 * n_layers + 1
    # LoRA on all three projections, no dropout: every MLP is the lean fused one.
    assert len(state.lora_mlps) == n_layers and not state.mlps
    assert len(state.attention) == n_layers
    attentions = [m for m in fast.modules() if isinstance(m, FusedRoPEAttention)]
    assert [m.qkv_adapter for m in attentions] == ['default'] * n_layers  # q/k/v fused too
    assert state.checkpointed_layers == n_layers
    assert [n for n, p in fast.named_parameters() if p.requires_grad] == trainable_before
    ids, labels = batch(fast.config.vocab_size)
    ref = plain(input_ids=ids, labels=labels).loss
    loss, n_tokens = causal_lm_loss(fast, ids, labels)
    assert n_tokens == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    ref.backward()
    loss.backward()
    g_ref, g = lora_grads(plain), lora_grads(fast)
    assert len(g) == 2 * 7 * n_layers and all(v is not None for v in g.values())
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_restore_gives_back_peft_layers(tiny_llama_dir):
    model = lora_llama(tiny_llama_dir)
    state = apply_fast_path(model)
    fused = (FusedLoRALinear, FusedRMSNorm, FusedSwiGLUMLP, FusedRoPEAttention, FusedLoRAMLP)
    assert any(isinstance(m, fused) for m in model.modules())
    state.restore(model)
    assert not any(isinstance(m, fused) for m in model.modules())
    merged = model.merge_and_unload()  # peft's own merge works again
    assert merged.config.num_hidden_layers == 2


def test_no_fp32_upcast_of_frozen_weights(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    model.model.norm.weight.data = model.model.norm.weight.data.float()  # what kbit prep does
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    state = apply_fast_path(model)
    assert state.recast_params == ['base_model.model.model.norm.weight']
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    ids, labels = batch(model.config.vocab_size)
    model.train()
    hidden = model.get_base_model().model(input_ids=ids).last_hidden_state
    assert hidden.dtype == torch.bfloat16


def test_qlora_4bit_trains_on_cpu(tiny_llama_dir):
    bnb_config = pytest.importorskip('transformers').BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32)
    # On a GPU host transformers would place a 4-bit model on cuda:0 by default.
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32,
                                                 quantization_config=bnb_config, device_map={'': 'cpu'})
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    state = apply_fast_path(model)
    assert len(state.lora) == 7 * model.config.num_hidden_layers
    assert len(state.lora_mlps) == model.config.num_hidden_layers
    model.train()
    ids, labels = batch(model.config.vocab_size)
    loss, _ = causal_lm_loss(model, ids, labels)
    ref = model(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    loss.backward()
    # peft starts B at zero, so A's first grads are zero too; B's must not be.
    b_grads = [g for n, g in lora_grads(model).items() if 'lora_B' in n]
    assert len(b_grads) == 7 * 2 and all(g is not None and g.abs().sum() > 0 for g in b_grads)


@pytest.mark.parametrize('chunk', [1, 3, 64])
def test_chunked_loss_equals_cross_entropy(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (2, 9))
    labels[0, :5] = IGNORE_INDEX
    loss, n = linear_cross_entropy(hidden, weight, labels, chunk_tokens=chunk)
    h2 = hidden.detach().clone().requires_grad_(True)
    w2 = weight.detach().clone().requires_grad_(True)
    logits = (h2 @ w2.T)[:, :-1].reshape(-1, 40)
    ref = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert n == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss, ref)
    (loss * 3).backward()
    (ref * 3).backward()
    torch.testing.assert_close(hidden.grad, h2.grad)
    torch.testing.assert_close(weight.grad, w2.grad)


def test_chunked_loss_sum_over_num_items_in_batch():
    hidden, weight = torch.randn(1, 5, 8), torch.randn(11, 8)
    labels = torch.tensor([[1, 2, 3, 4, 5]])
    mean, n = linear_cross_entropy(hidden, weight, labels)
    total, _ = linear_cross_entropy(hidden, weight, labels, num_items_in_batch=10)
    torch.testing.assert_close(total, mean * n / 10)


def test_packed_rows_with_the_block_mask_match_the_plain_path(tiny_llama_dir):
    from xft.model.packed_attention import packed_attention_kwargs
    plain, fast = lora_llama(tiny_llama_dir), lora_llama(tiny_llama_dir)
    apply_fast_path(fast)
    ids, labels = batch(fast.config.vocab_size)
    data = {'input_ids': ids, 'labels': labels, 'attention_mask': torch.ones_like(ids),
            'position_ids': torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]] * 2),
            'cumulative_len': [torch.tensor([0, 5, 12])] * 2, 'max_seqlen': 7}
    kwargs = packed_attention_kwargs(data, fast.config._attn_implementation)
    ref = plain(**kwargs).loss
    kwargs = packed_attention_kwargs(data, fast.config._attn_implementation)
    loss, _ = causal_lm_loss(fast, kwargs.pop('input_ids'), kwargs.pop('labels'), **kwargs)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
