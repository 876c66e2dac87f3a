"""Exports a serving engine loads unedited: vLLM, TGI and transformers pipelines read the
tokenizer's chat_template and generation_config.json and nothing else of xft. Read both back the
way they do, and generation must end at the training template's stop token.

The model: the tiny Llama rebuilt so that it always predicts chatml's ``<|im_end|>`` (attention
and MLP outputs zeroed, one embedding coordinate large, the head reading only that coordinate),
while the tokenizer's EOS stays ``</s>``. Stopping then depends on generation_config alone."""
import pytest
import torch
from helpers.convert import make_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from xft.tools.merge import main as merge_main
from xft.tools.pth_to_hf import main as pth_to_hf_main

MESSAGES = [{'role': 'user', 'content': 'Who are you?'}]
MAX_NEW_TOKENS = 6


@pytest.fixture(scope='module')
def always_stop_dir(tmp_path_factory, tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    stop = tokenizer.convert_tokens_to_ids('<|im_end|>')
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[stop, 0] = 1.0
    folder = tmp_path_factory.mktemp('always_stop')
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def engine_generate(model, folder):
    """What a serving engine does with an export folder: its tokenizer's chat template for the
    prompt, its generation_config for the stop ids. Returns (new token ids, config, tokenizer)."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = GenerationConfig.from_pretrained(str(folder))
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True,
                                           return_tensors='pt', return_dict=True)['input_ids']
    output = model.generate(prompt, generation_config=config, max_new_tokens=MAX_NEW_TOKENS,
                            do_sample=False)
    return output[0, prompt.shape[1]:].tolist(), config, tokenizer


def assert_stops_at_im_end(model, folder):
    new_ids, config, tokenizer = engine_generate(model, folder)
    stop = tokenizer.convert_tokens_to_ids('<|im_end|>')
    assert new_ids == [stop]                       # one token: the template's end of reply
    assert tokenizer.eos_token == '</s>' and tokenizer.pad_token == '<pad>'
    assert config.pad_token_id == tokenizer.pad_token_id
    assert stop in config.eos_token_id and tokenizer.eos_token_id in config.eos_token_id
    # Without the template's stop id the same engine runs on to its token limit.
    config.eos_token_id = tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True,
                                           return_tensors='pt', return_dict=True)['input_ids']
    runaway = model.generate(prompt, generation_config=config, max_new_tokens=MAX_NEW_TOKENS,
                             do_sample=False)
    assert runaway.shape[1] - prompt.shape[1] == MAX_NEW_TOKENS


def test_merged_export_stops_at_the_template_stop_token(tmp_path, always_stop_dir):
    config, checkpoint, _ = make_checkpoint(tmp_path, always_stop_dir, 'lora', template='chatml')
    adapter, merged = tmp_path / 'adapter', tmp_path / 'merged'
    assert pth_to_hf_main([str(config), str(checkpoint), str(adapter)]) == 0
    assert merge_main([str(always_stop_dir), str(adapter), str(merged)]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    assert_stops_at_im_end(model, merged)


def test_adapter_export_stops_at_the_template_stop_token(tmp_path, always_stop_dir):
    """An engine serving base + adapter takes tokenizer and generation_config from the adapter."""
    from peft import PeftModel
    config, checkpoint, _ = make_checkpoint(tmp_path, always_stop_dir, 'lora', template='chatml')
    adapter = tmp_path / 'adapter'
    assert pth_to_hf_main([str(config), str(checkpoint), str(adapter)]) == 0
    base = AutoModelForCausalLM.from_pretrained(str(always_stop_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    assert_stops_at_im_end(model, adapter)
