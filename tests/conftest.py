"""Shared fixtures: offline, CPU, one thread, tiny models built on the spot."""
import os

# Set before transformers/datasets are imported by any test module.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_NO_ADVISORY_WARNINGS', '1')

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / 'fixtures'
SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'

SPECIAL_TOKENS = ['<unk>', '<s>', '</s>', '<pad>', '<|im_start|>', '<|im_end|>']


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv('HF_DATASETS_CACHE', str(tmp_path_factory.mktemp('hf_datasets_cache')))


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


@pytest.fixture(scope='session')
def tiny_tokenizer():
    return build_tiny_tokenizer()


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


@pytest.fixture(scope='session')
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    """A folder holding a tiny random Llama and its tokenizer, loadable by from_pretrained."""
    return save_tiny_llama(tmp_path_factory.mktemp('tiny_llama'), tiny_tokenizer)


@pytest.fixture(scope='session')
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.fail(f'shared data folder not found at {SHARED_DATA}')
    return SHARED_DATA
