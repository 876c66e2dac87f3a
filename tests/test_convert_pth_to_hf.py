"""pth_to_hf: LoRA, QLoRA and full checkpoints become folders the HF world loads."""
import json
from pathlib import Path

import pytest
import torch
from helpers.convert import SAMPLE_TEXT, make_checkpoint, write_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from xft.model.quantization import keep_4bit_weights_trainable_on_cpu
from xft.tools.pth_to_hf import main as pth_to_hf_main


def _ids(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return torch.tensor([tokenizer.encode(SAMPLE_TEXT)])


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.fixture(scope='module')
def lora_run(tmp_path_factory, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp('lora_run')
    config, checkpoint, model = make_checkpoint(tmp, tiny_llama_dir, 'lora')
    out = tmp / 'adapter'
    assert pth_to_hf_main([str(config), str(checkpoint), str(out)]) == 0
    return model, out


def test_lora_checkpoint_becomes_peft_adapter_with_trained_logits(lora_run, tiny_llama_dir):
    from peft import PeftModel
    trained, out = lora_run
    assert (out / 'adapter_config.json').is_file()
    assert (out / 'adapter_model.safetensors').is_file()
    adapter_config = json.loads((out / 'adapter_config.json').read_text())
    assert adapter_config['base_model_name_or_path'] == str(tiny_llama_dir)
    # Default targets: every linear layer but the head, as training chose them.
    assert sorted(adapter_config['target_modules']) == [
        'down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']

    ids = _ids(tiny_llama_dir)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    base_logits = _logits(base, ids)
    loaded = PeftModel.from_pretrained(base, str(out))
    loaded_logits = _logits(loaded, ids)
    trained_logits = _logits(trained.llm, ids)
    assert (trained_logits - base_logits).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(loaded_logits, trained_logits, rtol=0, atol=1e-5)


def test_adapter_loads_through_auto_peft_and_carries_tokenizer_and_config(lora_run):
    from peft import AutoPeftModelForCausalLM
    trained, out = lora_run
    model = AutoPeftModelForCausalLM.from_pretrained(str(out))
    ids = _ids(out)
    torch.testing.assert_close(_logits(model, ids), _logits(trained.llm, ids), rtol=0, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert '<|im_start|>' in tokenizer.chat_template
    assert (out / 'xft_config.py').is_file()


def test_qlora_checkpoint_converts_without_loading_the_quantized_base(
        tmp_path, tiny_llama_dir, monkeypatch):
    from peft import PeftModel
    from transformers import BitsAndBytesConfig
    config, checkpoint, trained = make_checkpoint(tmp_path, tiny_llama_dir, 'qlora')
    # Conversion must not load weights: any from_pretrained of a model would be a second load.
    calls = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, 'from_pretrained',
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    out = tmp_path / 'qlora_adapter'
    assert pth_to_hf_main([str(config), str(checkpoint), str(out)]) == 0
    assert calls == []
    monkeypatch.undo()

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',
                                      bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir),
                                                quantization_config=quantization)
    # Same 4-bit kernel path as training (bitsandbytes' CPU bf16 repack computes differently).
    keep_4bit_weights_trainable_on_cpu(base)
    loaded = PeftModel.from_pretrained(base, str(out))
    ids = _ids(tiny_llama_dir)
    torch.testing.assert_close(_logits(loaded, ids), _logits(trained.llm, ids), rtol=0, atol=1e-4)


def test_full_checkpoint_becomes_sharded_model_folder(tmp_path, tiny_llama_dir):
    config, checkpoint, trained = make_checkpoint(tmp_path, tiny_llama_dir, 'full')
    out = tmp_path / 'full'
    assert pth_to_hf_main([str(config), str(checkpoint), str(out),
                           '--max-shard-size', '100KB']) == 0
    shards = sorted(p.name for p in out.glob('*.safetensors'))
    assert len(shards) > 1 and (out / 'model.safetensors.index.json').is_file()
    assert not list(out.glob('*.bin'))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.dtype == torch.float32  # the config's dtype
    ids = _ids(out)
    torch.testing.assert_close(_logits(model, ids), _logits(trained.llm, ids), rtol=0, atol=1e-6)
    assert '<|im_start|>' in AutoTokenizer.from_pretrained(str(out)).chat_template


def test_full_export_dtype_follows_the_config_and_fp32_flag(tmp_path, tiny_llama_dir, capsys):
    from helpers.convert import build_model_from_config, save_checkpoint, write_config
    config = write_config(tmp_path / 'bf16_cfg.py', tiny_llama_dir, 'full', dtype='bfloat16')
    model = build_model_from_config(config)
    checkpoint = save_checkpoint(model, tmp_path / 'iter_1.pth')
    capsys.readouterr()
    assert pth_to_hf_main([str(config), str(checkpoint), str(tmp_path / 'bf16')]) == 0
    out = capsys.readouterr().out
    assert '[1/4]' in out and '[4/4]' in out and 'saved a full model to' in out
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / 'bf16')).dtype == torch.bfloat16
    assert pth_to_hf_main([str(config), str(checkpoint), str(tmp_path / 'fp32'), '--fp32']) == 0
    fp32 = AutoModelForCausalLM.from_pretrained(str(tmp_path / 'fp32'))
    assert fp32.dtype == torch.float32
    # Exactly the trained bf16 weights, widened.
    trained = model.llm.state_dict()
    assert all(torch.equal(value.float(), trained[key].float())
               for key, value in fp32.state_dict().items())


def test_cfg_options_reach_the_export(tmp_path, tiny_llama_dir, capsys):
    config, checkpoint, _ = make_checkpoint(tmp_path, tiny_llama_dir, 'lora')
    out = tmp_path / 'adapter_r4'
    capsys.readouterr()  # drop the model build's own output
    # The checkpoint was trained with r=8; claiming r=4 must be caught, not saved.
    code = pth_to_hf_main([str(config), str(checkpoint), str(out),
                           '--cfg-options', 'model.lora.r=4'])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'does not match' in err


@pytest.mark.parametrize('problem', ['missing_pth', 'missing_config', 'not_xft_checkpoint'])
def test_bad_input_is_one_line_and_nonzero(tmp_path, tiny_llama_dir, capsys, problem):
    config, checkpoint, _ = make_checkpoint(tmp_path, tiny_llama_dir, 'lora')
    if problem == 'missing_pth':
        checkpoint = tmp_path / 'nope.pth'
    elif problem == 'missing_config':
        config = tmp_path / 'nope_cfg.py'
    else:
        torch.save({'state_dict': {'backbone.weight': torch.zeros(2)}}, str(checkpoint))
    capsys.readouterr()
    code = pth_to_hf_main([str(config), str(checkpoint), str(tmp_path / 'out')])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and 'Traceback' not in err


def test_runner_checkpoint_converts_merges_and_chats_like_the_trained_model(
        tmp_path, tiny_llama_dir, tiny_tokenizer):
    """A checkpoint the mmengine CheckpointHook wrote (message hub, optimizer state and all)
    -> pth_to_hf -> merge -> chat: the merged model answers as the trained one does."""
    from helpers.convert import (build_model_from_config, chatml_samples, run_toy_training,
                                  write_config)

    from xft.model.generation import GenerationSettings, encode_for_generation, generate_reply
    from xft.tools.merge import main as merge_main
    config = write_config(tmp_path / 'lora_cfg.py', tiny_llama_dir, 'lora')
    model = build_model_from_config(config)
    pairs = [('Who are you?', 'I am Lumi.'), ('Say hello.', 'Hello!')] * 2
    run_toy_training(model, tiny_tokenizer, tmp_path / 'run', chatml_samples(tiny_tokenizer, pairs),
                     max_iters=4, checkpoint_interval=4)
    adapter, merged_dir = tmp_path / 'adapter', tmp_path / 'merged'
    assert pth_to_hf_main([str(config), str(tmp_path / 'run' / 'iter_4.pth'), str(adapter)]) == 0
    assert merge_main([str(tiny_llama_dir), str(adapter), str(merged_dir)]) == 0

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    prompt = encode_for_generation([], 'Who are you?', 'chatml', tokenizer)
    settings = GenerationSettings(max_new_tokens=6, temperature=0)
    stop = ['<|im_end|>', tokenizer.eos_token]
    model.llm.eval()
    assert (generate_reply(merged, tokenizer, prompt, settings, stop)
            == generate_reply(model.llm, tokenizer, prompt, settings, stop))
    ids = torch.tensor([prompt])
    torch.testing.assert_close(_logits(merged, ids), _logits(model.llm, ids), rtol=0, atol=1e-4)


DEEPSPEED_FIXTURE = Path(__file__).parent / 'fixtures' / 'convert_deepspeed_zero2'


def test_deepspeed_zero2_checkpoint_folder_becomes_the_trained_adapter(
        tmp_path, tiny_llama_dir, capsys):
    """A folder that mmengine's DeepSpeed strategy saved (see the fixture's make_checkpoint.py):
    the adapter holds exactly the trained float32 LoRA weights (deepspeed is a runtime
    requirement: without it this test fails rather than passing on the error line)."""
    from safetensors.torch import load_file
    config = write_config(tmp_path / 'lora_cfg.py', tiny_llama_dir, 'lora')
    out = tmp_path / 'adapter'
    code = pth_to_hf_main([str(config), str(DEEPSPEED_FIXTURE / 'iter_1.pth'), str(out)])
    assert code == 0, capsys.readouterr().err
    trained = torch.load(DEEPSPEED_FIXTURE / 'trained_lora_weights.pt')
    saved = load_file(str(out / 'adapter_model.safetensors'))
    # peft's saved names drop the adapter name ('.default') and SupervisedFinetune's 'llm.'.
    expected = {k.replace('.default', '')[len('llm.'):]: v for k, v in trained.items()}
    assert set(saved) == set(expected) and len(saved) == 28
    for key, value in expected.items():
        assert torch.equal(saved[key], value), key


def test_a_deepspeed_folder_without_deepspeed_installed_is_one_line(tmp_path, tiny_llama_dir, capsys,
                                                                     monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'deepspeed.utils.zero_to_fp32', None)  # import now raises ImportError
    config = write_config(tmp_path / 'lora_cfg.py', tiny_llama_dir, 'lora')
    capsys.readouterr()
    code = pth_to_hf_main([str(config), str(DEEPSPEED_FIXTURE / 'iter_1.pth'), str(tmp_path / 'out')])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'needs deepspeed' in err[0]


def test_a_folder_that_is_not_a_deepspeed_checkpoint_is_one_line(tmp_path, tiny_llama_dir, capsys):
    config = write_config(tmp_path / 'lora_cfg.py', tiny_llama_dir, 'lora')
    (tmp_path / 'iter_1.pth').mkdir()
    capsys.readouterr()
    code = pth_to_hf_main([str(config), str(tmp_path / 'iter_1.pth'), str(tmp_path / 'out')])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert 'DeepSpeed' in err[0] or 'deepspeed' in err[0]


def test_exported_models_stop_at_the_templates_end_of_reply_token(tmp_path, tiny_llama_dir):
    """The tiny tokenizer's EOS is </s>; chatml ends replies with <|im_end|>. Tools that read
    only generation_config must stop at both, after pth_to_hf (full) and after merge."""
    from transformers import GenerationConfig

    from xft.tools.merge import main as merge_main
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    expected = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids('<|im_end|>')]
    config, checkpoint, _ = make_checkpoint(tmp_path, tiny_llama_dir, 'full')
    assert pth_to_hf_main([str(config), str(checkpoint), str(tmp_path / 'full')]) == 0
    assert GenerationConfig.from_pretrained(str(tmp_path / 'full')).eos_token_id == expected

    config, checkpoint, _ = make_checkpoint(tmp_path, tiny_llama_dir, 'lora')
    assert pth_to_hf_main([str(config), str(checkpoint), str(tmp_path / 'adapter')]) == 0
    assert merge_main([str(tiny_llama_dir), str(tmp_path / 'adapter'), str(tmp_path / 'm')]) == 0
    assert GenerationConfig.from_pretrained(str(tmp_path / 'm')).eos_token_id == expected
