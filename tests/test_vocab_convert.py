"""A tokenizer with added tokens, through the whole path: train one step -> pth_to_hf -> merge.
The merged model has the grown vocabulary and the trained model's logits (LoRA and full)."""
from pathlib import Path

import pytest
import torch
from helpers.convert import build_model_from_config, chatml_samples, run_toy_training
from transformers import AutoModelForCausalLM, AutoTokenizer

from xft.tools import merge, pth_to_hf

ADDED = ['<tool>', '<obs>']
CONFIG = '''\
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from xft.model import SupervisedFinetune
from xft.utils import PROMPT_TEMPLATE

pretrained_model_name_or_path = {model_dir!r}
prompt_template = PROMPT_TEMPLATE.chatml

tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path={tokenizer_dir!r},
    padding_side='right')

model = dict(
    type=SupervisedFinetune,
    tokenizer=tokenizer,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=pretrained_model_name_or_path,
        torch_dtype=torch.float32),
    lora={lora})
'''
LORA = "dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.0, task_type='CAUSAL_LM')"


@pytest.fixture(scope='module')
def grown_tokenizer(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp('grown_tokenizer')
    tiny_tokenizer.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(ADDED, special_tokens=True)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


@pytest.mark.parametrize('kind', ['lora', 'full'])
def test_added_tokens_train_convert_and_merge_with_equal_logits(tmp_path, tiny_llama_dir, grown_tokenizer, kind):
    tokenizer_dir, tokenizer = grown_tokenizer
    config = tmp_path / 'grown.py'
    config.write_text(CONFIG.format(model_dir=str(tiny_llama_dir), tokenizer_dir=str(tokenizer_dir),
                                    lora=LORA if kind == 'lora' else 'None'))
    model = build_model_from_config(config)
    samples = chatml_samples(tokenizer, [('Call the tool.', '<tool> weather <obs> sunny'),
                                         ('And again?', '<tool> time <obs> noon')])
    assert all(512 in s['input_ids'] and 513 in s['input_ids'] for s in samples)
    run_toy_training(model, tokenizer, tmp_path / 'run', samples, max_iters=1, checkpoint_interval=1)

    exported = tmp_path / 'exported'
    assert pth_to_hf.main([str(config), str(tmp_path / 'run' / 'iter_1.pth'), str(exported)]) == 0
    if kind == 'lora':
        final = tmp_path / 'merged'
        assert merge.main([str(tiny_llama_dir), str(exported), str(final)]) == 0
    else:
        final = exported
    hf = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32)
    assert hf.config.vocab_size == 576 and hf.get_input_embeddings().weight.shape == (576, 64)
    assert len(AutoTokenizer.from_pretrained(str(final))) == 514  # the training tokenizer, beside it

    ids = torch.tensor([[1] + tokenizer('The <tool> answer <obs> is').input_ids + [513, 512]])
    model.eval()
    with torch.no_grad():
        trained = model({'input_ids': ids, 'attention_mask': torch.ones_like(ids)}, mode='predict')
        torch.testing.assert_close(hf(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-5)
        # The new rows trained away from the mean they started at.
        head = hf.get_output_embeddings().weight
        base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
        start = base.get_output_embeddings().weight.mean(0)
        assert (head[512:] - start).abs().amax(dim=1).min() > 1e-4


def test_chat_and_merge_grow_a_base_for_an_adapter_with_added_tokens(tmp_path, tiny_llama_dir, grown_tokenizer):
    """grow_base_to_adapter reads the rows from the adapter alone (trainable_token_indices)."""
    from xft.model.vocab import grow_base_to_adapter

    tokenizer_dir, _ = grown_tokenizer
    config = tmp_path / 'grown.py'
    config.write_text(CONFIG.format(model_dir=str(tiny_llama_dir), tokenizer_dir=str(tokenizer_dir), lora=LORA))
    model = build_model_from_config(config)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, tmp_path / 'iter_0.pth')
    assert pth_to_hf.main([str(config), str(tmp_path / 'iter_0.pth'), str(tmp_path / 'adapter')]) == 0
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    assert grow_base_to_adapter(base, Path(tmp_path / 'adapter')) == 576
    assert grow_base_to_adapter(base, Path(tmp_path / 'adapter')) is None
