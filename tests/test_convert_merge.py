"""merge: the merged model answers with the logits of base + adapter."""
import json

import pytest
import torch
from helpers.convert import SAMPLE_TEXT
from helpers.models import save_tiny_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from xft.tools.merge import main as merge_main


def _real_text(shared_data):
    """An alpaca row (instruction + output): text the tokenizer was not trained on."""
    rows = json.loads((shared_data / 'alpaca' / 'alpaca_data_subset.json').read_text())
    row = next(r for r in rows if len(r['output']) > 200)
    return row['instruction'] + '\n' + row['output']


def _random_adapter(base_dir, adapter_dir, dtype, r=8, seed=3):
    """Save a LoRA adapter with non-zero B (a fresh one is the identity) for ``base_dir``."""
    from peft import LoraConfig, get_peft_model
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=16, target_modules='all-linear',
                                                 task_type='CAUSAL_LM'))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if 'lora_B' in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    peft_model.save_pretrained(str(adapter_dir))
    return adapter_dir


def _logits_of_each_path(base_dir, adapter_dir, merged_dir, text):
    """Logits of: the base; base + adapter unmerged (in the base dtype); the merged model; and
    base + adapter computed in float32 (the reference both low-precision paths approximate)."""
    from peft import PeftModel
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    ids = torch.tensor([tokenizer.encode(text)[:256]])

    def run(model):
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits.float()

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype='auto')
    base_logits = run(base)
    unmerged_logits = run(PeftModel.from_pretrained(base, str(adapter_dir)))
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype='auto')
    merged_logits = run(merged)
    base32 = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    reference = run(PeftModel.from_pretrained(base32, str(adapter_dir)))
    return dict(base=base_logits, unmerged=unmerged_logits, merged=merged_logits,
                reference=reference, merged_dtype=merged.dtype)


def assert_merged_within_precision(logits):
    """The merged model is as close to the float32 truth as base + adapter in the same dtype.

    In bf16 both paths round (merging rounds W + BA once; the unmerged path rounds W x and
    B A x separately), so "equal to bf16 tolerance" means: the merged error is no larger than
    the error bf16 itself brings to the unmerged path.
    """
    reference = logits['reference']
    merged_error = (logits['merged'] - reference).abs()
    unmerged_error = (logits['unmerged'] - reference).abs()
    assert (logits['unmerged'] - logits['base']).abs().max() > 1e-2  # the adapter matters
    if logits['merged_dtype'] == torch.float32:
        torch.testing.assert_close(logits['merged'], logits['unmerged'], rtol=0, atol=1e-5)
        return
    assert merged_error.mean() <= 1.5 * unmerged_error.mean() + 1e-6
    assert merged_error.max() <= 1.5 * unmerged_error.max() + 1e-6
    merged_agree = (logits['merged'].argmax(-1) == reference.argmax(-1)).float().mean()
    unmerged_agree = (logits['unmerged'].argmax(-1) == reference.argmax(-1)).float().mean()
    assert merged_agree >= unmerged_agree - 0.02


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_merged_logits_equal_base_plus_adapter(tmp_path, tiny_tokenizer, shared_data, dtype):
    base_dir = save_tiny_llama(tmp_path / 'base', tiny_tokenizer)
    if dtype != torch.float32:  # a base released in bf16 must merge and save in bf16
        AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype).save_pretrained(base_dir)
    adapter_dir = _random_adapter(base_dir, tmp_path / 'adapter', dtype)
    merged_dir = tmp_path / 'merged'
    assert merge_main([str(base_dir), str(adapter_dir), str(merged_dir),
                       '--max-shard-size', '100KB']) == 0
    assert len(list(merged_dir.glob('model-*.safetensors'))) > 1
    assert not list(merged_dir.glob('adapter_*'))

    logits = _logits_of_each_path(base_dir, adapter_dir, merged_dir, _real_text(shared_data))
    assert logits['merged_dtype'] == dtype
    assert_merged_within_precision(logits)


@pytest.mark.slow
def test_merged_smollm2_matches_adapter_on_real_text(tmp_path, shared_data):
    from xft.tools.prepare_demo_model import prepare_demo_model
    base_dir = prepare_demo_model()
    adapter_dir = _random_adapter(base_dir, tmp_path / 'adapter', torch.bfloat16, seed=5)
    merged_dir = tmp_path / 'merged'
    assert merge_main([str(base_dir), str(adapter_dir), str(merged_dir)]) == 0
    logits = _logits_of_each_path(base_dir, adapter_dir, merged_dir, _real_text(shared_data))
    assert logits['merged_dtype'] == torch.bfloat16
    assert_merged_within_precision(logits)


def test_merge_reports_bad_paths_in_one_line(tmp_path, tiny_llama_dir, capsys):
    code = merge_main([str(tiny_llama_dir), str(tmp_path / 'no_adapter'), str(tmp_path / 'o')])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and 'adapter_config.json' in err


def test_merge_prefers_the_adapter_tokenizer_with_its_chat_template(tmp_path, tiny_llama_dir):
    adapter_dir = _random_adapter(tiny_llama_dir, tmp_path / 'adapter', torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tokenizer.chat_template = '{{ messages[0]["content"] }}'
    tokenizer.save_pretrained(str(adapter_dir))
    merged_dir = tmp_path / 'merged'
    assert merge_main([str(tiny_llama_dir), str(adapter_dir), str(merged_dir)]) == 0
    merged_tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    assert merged_tokenizer.chat_template == tokenizer.chat_template
    assert merged_tokenizer.encode(SAMPLE_TEXT) == tokenizer.encode(SAMPLE_TEXT)
