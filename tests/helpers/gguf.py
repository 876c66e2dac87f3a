"""Helpers for the GGUF export tests: a SentencePiece-style tokenizer built on the spot, tiny
models of each exported architecture, and reading a GGUF back the way transformers does."""
import json
from pathlib import Path

import torch
from helpers.paths import FIXTURES

SPM_SPECIALS = ['<unk>', '<s>', '</s>']
CHAT_TOKENS = ['<|im_start|>', '<|im_end|>']
# Chinese text for the tokenizers' vocabularies and the id checks: the first instructions of
# ../shared/data/alpaca_zh/alpaca_gpt4_zh_demo.json, inlined so the tests need no shared data.
CHINESE = ('识别并解释给定列表中的两个科学理论：细胞理论和日心说。'
           '细胞理论是生物科学的一个理论，它认为所有生命体都是由微小的基本单元——细胞所构成。')
MIXED_TEXT = ('First Citizen: Before we proceed any further, hear me speak. 你好，世界！'
              '细胞理论和日心说 ok?\n  two  spaces, tabs\tand digits 1234567 — done.')


def build_tiny_spm_tokenizer(vocab_size=700):
    """A Llama-2-style tokenizer (the shape transformers converts SentencePiece models to): BPE
    with byte fallback over ``<0x00>``..``<0xFF>``, ``▁`` for spaces with one prefixed, BOS
    added. Trained in about 0.5 s on the Shakespeare fixture and a Chinese sentence; the
    chatml tokens are added special tokens, as a fine-tune adds them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    trainer_model = Tokenizer(models.BPE(unk_token='<unk>'))
    trainer_model.pre_tokenizer = pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='first')
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[],
                                  limit_alphabet=200, show_progress=False)
    lines = (FIXTURES / 'tinyshakespeare_head.txt').read_text().splitlines() + [CHINESE] * 20
    trainer_model.train_from_iterator(lines, trainer)
    trained = json.loads(trainer_model.to_str())['model']
    # Llama's layout: specials, then the 256 byte pieces, then the learned pieces.
    vocab = {token: index for index, token in enumerate(
        SPM_SPECIALS + [f'<0x{byte:02X}>' for byte in range(256)])}
    for token, _ in sorted(trained['vocab'].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in trained['merges']]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token='<unk>',
                               byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='first',
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Replace('▁', ' '), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(' ', 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single='<s> $A', pair='<s> $A <s> $B', special_tokens=[('<s>', 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>', eos_token='</s>',
                                        unk_token='<unk>')
    tokenizer.add_special_tokens({'additional_special_tokens': CHAT_TOKENS})
    return tokenizer


def save_tiny_model(path, tokenizer, model_type='llama', seed=0, tie=False, dtype=torch.float32):
    """Save a 2-layer, 64-wide random model of ``model_type`` with ``tokenizer`` into ``path``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    if model_type == 'qwen2':   # fresh biases are zero: make them count
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith('bias'):
                    param.normal_(0, 0.2)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def load_gguf(path):
    """(model, tokenizer) that transformers builds from a GGUF file, float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    return model.eval(), tokenizer


def gguf_fields(path):
    """The GGUF file's metadata as {key: python value} (strings, numbers, lists)."""
    from gguf import GGUFReader
    reader = GGUFReader(str(path))
    fields = {}
    for key, field in reader.fields.items():
        values = field.contents()
        fields[key] = values
    return fields, {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
