"""RoPE op and attention module: equal to transformers' Llama attention on CPU (the torch
fallback), with grouped KV heads, in training (own path) and generation (handed back)."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, apply_rotary_pos_emb

from xft.model.kernels import swap_modules
from xft.model.kernels.rope import FusedRoPEAttention, rope, rope_reference


def test_rope_matches_transformers_apply_rotary_pos_emb():
    torch.manual_seed(0)
    q = torch.randn(2, 7, 4, 16)  # batch, tokens, heads, dim (the projection's layout)
    cos, sin = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    expected, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), cos, sin)
    torch.testing.assert_close(rope_reference(q, cos, sin), expected)
    torch.testing.assert_close(rope(q, cos, sin), expected)


def tiny(seed=0):
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attn_implementation='sdpa')
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def test_attention_swap_keeps_training_outputs_grads_and_keys():
    ref, fused = tiny(), tiny()
    keys = list(fused.state_dict())
    replaced = swap_modules(fused, LlamaAttention, FusedRoPEAttention.from_module)
    assert len(replaced) == 2 and list(fused.state_dict()) == keys
    ids = torch.randint(0, 64, (2, 9))
    handed_back = []
    fused.model.layers[0].self_attn._original.register_forward_hook(
        lambda *a: handed_back.append(1))
    for model in (ref, fused):
        model.train()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    assert handed_back == []  # training ran the fused module's own path
    torch.testing.assert_close(fused.model.layers[0].self_attn.q_proj.weight.grad,
                               ref.model.layers[0].self_attn.q_proj.weight.grad)


def test_generation_with_cache_is_unchanged():
    ref, fused = tiny(), tiny()
    swap_modules(fused, LlamaAttention, FusedRoPEAttention.from_module)
    handed_back = []
    fused.model.layers[0].self_attn._original.register_forward_hook(
        lambda *a: handed_back.append(1))
    ids = torch.randint(0, 64, (1, 5))
    kw = dict(max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids))
    assert torch.equal(ref.eval().generate(ids, **kw), fused.eval().generate(ids, **kw))
    assert handed_back  # with a KV cache the original module did the work
