"""The tiny models of the suite: a byte-level BPE tokenizer trained on a shipped text and a
2-layer, 64-wide random Llama, both built offline in well under a second."""
from pathlib import Path

import torch

from helpers.paths import FIXTURES

SPECIAL_TOKENS = ['<unk>', '<s>', '</s>', '<pad>', '<|im_start|>', '<|im_end|>']


def build_tiny_tokenizer(vocab_size=512):
    """A byte-level BPE trained in about 0.3 s on a shipped text, with Llama-style BOS/EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(FIXTURES / 'tinyshakespeare_head.txt')], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token='<s>', eos_token='</s>', unk_token='<unk>',
        pad_token='<pad>')


def save_tiny_llama(path, tokenizer, seed=0):
    """Save a 2-layer, 64-wide random Llama with ``tokenizer`` into ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def save_tiny_moe(path, tokenizer, model_type, experts=4, seed=0):
    """Save a 2-layer, 64-wide random DeepSeek-V2 (``'deepseek_v2'``: its second layer holds
    ``experts`` routed experts and a shared one) or Mixtral (``'mixtral'``) with ``tokenizer``."""
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    if model_type == 'deepseek_v2':
        config = transformers.DeepseekV2Config(
            **common, moe_intermediate_size=32, n_routed_experts=experts, n_shared_experts=1, num_experts_per_tok=2,
            first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
            qk_nope_head_dim=8, v_head_dim=16)
        model = transformers.DeepseekV2ForCausalLM(config)
    else:
        config = transformers.MixtralConfig(**common, num_local_experts=experts, num_experts_per_tok=2)
        model = transformers.MixtralForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)
