"""XTuner 0.1.23's SupervisedFinetune arguments, each honoured or refused in one line:
``max_position_embeddings`` (RoPE scaled linearly), ``tokenizer`` (embeddings grown, new rows
trainable), ``peft_model`` (checked against ``lora``), anything else."""
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GPT2Config, LlamaConfig

from xft.model import SupervisedFinetune
from xft.model.long_context import linear_rope_scaling
from xft.model.vocab import embedding_rows_for
from xft.utils.errors import ConfigError

LORA = dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.0, task_type='CAUSAL_LM')
ADDED = ['<tool>', '<obs>']


def llm_cfg(path, bits=None):
    cfg = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(path),
               dtype=torch.float32)
    if bits == 4:
        cfg['quantization_config'] = dict(type=BitsAndBytesConfig, load_in_4bit=True,
                                          bnb_4bit_compute_dtype=torch.float32)
    return cfg


@pytest.fixture
def capture_log(capsys):
    """``read = capture_log()`` in a test's body: print_log(logger='current') then writes to
    the captured stdout (a new MMLogger instance becomes the current one; its handler binds
    sys.stdout when made). Afterwards the handler writes to the process's stdout again, never
    to the test's closed capture stream."""
    import sys
    import uuid

    from mmengine.logging import MMLogger
    loggers = []

    def start():
        loggers.append(MMLogger.get_instance(f'xft_test_{uuid.uuid4().hex}', log_level='INFO'))
        return lambda: capsys.readouterr().out

    yield start
    for logger in loggers:
        for handler in logger.handlers:
            if hasattr(handler, 'stream'):  # not setStream: it would flush the closed stream
                handler.stream = sys.__stdout__


def base_of(model):
    return model.llm.get_base_model() if hasattr(model.llm, 'get_base_model') else model.llm


# ----------------------------------------------------------------------- attn_implementation

def test_flash_attention_asked_for_but_not_installed_falls_back_to_sdpa_and_says_so(tiny_llama_dir, capture_log,
                                                                                    monkeypatch):
    import transformers.utils
    log = capture_log()
    monkeypatch.setattr(transformers.utils, 'is_flash_attn_2_available', lambda: False)
    model = SupervisedFinetune(llm=dict(llm_cfg(tiny_llama_dir), attn_implementation='flash_attention_2'),
                               lora=LORA, use_fast_path=False)
    assert model.attention_implementation == 'sdpa'
    assert ("model.llm.attn_implementation='flash_attention_2': flash-attn 2 is not installed here; using "
            "'sdpa'") in log()
    # Without the fallback transformers stops the build (XTuner's mistral full configs ask for it).
    with pytest.raises(ImportError, match='FlashAttention2'):
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation='flash_attention_2')


# ----------------------------------------------------------------------- max_position_embeddings

def test_rope_is_scaled_linearly_before_the_model_is_built(tiny_llama_dir, capture_log):
    log = capture_log()
    plain = SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=LORA, use_fast_path=False)
    model = SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=LORA, max_position_embeddings=1500)
    config = base_of(model).config
    # ceil(1500 / 512) = 3, as XTuner 0.1.23 computed it; the model's rope_theta is kept.
    assert config.rope_parameters == {'rope_type': 'linear', 'factor': 3.0, 'rope_theta': 10000.0}
    torch.testing.assert_close(base_of(model).model.rotary_emb.inv_freq,
                               base_of(plain).model.rotary_emb.inv_freq / 3)
    assert "RoPE scaled linearly by 3 (rope_parameters=" in log()


def test_a_length_the_model_covers_leaves_rope_alone(tiny_llama_dir, capture_log):
    log = capture_log()
    model = SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=LORA, max_position_embeddings=512)
    assert base_of(model).config.rope_parameters['rope_type'] == 'default'
    assert "within the model's 512 positions, RoPE left as it is" in log()


def test_rope_scaling_that_cannot_be_honoured_is_refused(tiny_llama_dir):
    explicit = dict(llm_cfg(tiny_llama_dir), rope_parameters={'rope_type': 'dynamic', 'factor': 2.0})
    with pytest.raises(ConfigError, match='max_position_embeddings=4096 and model.llm.rope_parameters both scale '
                                          'RoPE; keep one'):
        SupervisedFinetune(llm=explicit, lora=LORA, max_position_embeddings=4096)
    with pytest.raises(ConfigError, match=r"max_position_embeddings=4096 exceeds the model's 1024 positions, "
                                          r"but GPT2Config has no RoPE scaling"):
        linear_rope_scaling(GPT2Config(n_positions=1024), 4096)
    scaled = LlamaConfig(max_position_embeddings=8192,
                         rope_parameters={'rope_type': 'llama3', 'factor': 8.0, 'rope_theta': 500000.0,
                                          'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                                          'original_max_position_embeddings': 8192})
    with pytest.raises(ConfigError, match="the model already scales RoPE .*'llama3'"):
        linear_rope_scaling(scaled, 65536)
    # Remote-code configs that read XTuner's rope_scaling get XTuner's dict.
    remote = GPT2Config(n_positions=2048)
    remote.rope_scaling = None
    assert linear_rope_scaling(remote, 5000)[0] == {'rope_scaling': {'type': 'linear', 'factor': 3.0}}


# ------------------------------------------------------------------------------ other arguments

def test_an_argument_xft_does_not_know_is_refused_in_one_line(tiny_llama_dir):
    with pytest.raises(ConfigError) as error:
        SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=LORA, use_flash_attn=True)
    message = str(error.value)
    assert '\n' not in message
    assert message.startswith('model: SupervisedFinetune has no argument use_flash_attn; it takes llm, lora, '
                              'peft_model, use_activation_checkpointing, use_varlen_attn, tokenizer, '
                              'max_position_embeddings')


# ------------------------------------------------------------------------------------ tokenizer

@pytest.fixture(scope='module')
def grown_tokenizer_dir(tmp_path_factory, tiny_tokenizer):
    """The tiny model's tokenizer with two added tokens (512 -> 514)."""
    folder = tmp_path_factory.mktemp('grown_tokenizer')
    tiny_tokenizer.save_pretrained(folder)
    loaded = AutoTokenizer.from_pretrained(folder)
    loaded.add_tokens(ADDED, special_tokens=True)
    loaded.save_pretrained(folder)
    assert len(loaded) == 514
    return folder


def tokenizer_cfg(path):
    return dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=str(path))


def test_rows_grow_to_a_multiple_of_64():
    assert embedding_rows_for(514, 512) == 576
    assert embedding_rows_for(512, 512) is None


def test_a_larger_tokenizer_grows_the_embeddings_and_lora_trains_only_the_new_rows(
        tiny_llama_dir, grown_tokenizer_dir, capture_log):
    log = capture_log()
    model = SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=LORA, tokenizer=tokenizer_cfg(grown_tokenizer_dir))
    base = base_of(model)
    assert base.get_input_embeddings().weight.shape[0] == 576 and base.config.vocab_size == 576
    assert 'embeddings resized from 512 to 576 rows' in log()
    tokens = {name: p.shape for name, p in model.named_parameters() if p.requires_grad and 'lora_' not in name}
    assert tokens == {'llm.base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.default': (64, 64),
                      'llm.base_model.model.lm_head.token_adapter.trainable_tokens_delta.default': (64, 64)}
    # The new rows start at the mean of the old ones.
    for weight in (model.llm.get_base_model().model.embed_tokens.token_adapter.base_layer.weight,
                   model.llm.get_base_model().lm_head.token_adapter.base_layer.weight):
        torch.testing.assert_close(weight[512:], weight[:512].mean(0, keepdim=True).expand(64, -1))
    # They train: an added token's input row and every new output row get gradients.
    ids = torch.tensor([[1, 40, 512, 513, 50, 60]])
    model.train()
    model({'input_ids': ids, 'labels': ids, 'attention_mask': torch.ones_like(ids)})['loss'].backward()
    grads = {('embed_tokens' if 'embed_tokens' in name else 'lm_head'): p.grad
             for name, p in model.named_parameters() if 'trainable_tokens' in name}
    assert grads['embed_tokens'][:2].abs().sum() > 0 and grads['embed_tokens'][2:].abs().sum() == 0
    assert (grads['lm_head'].abs().sum(dim=1) > 0).all()


def test_full_fine_tuning_grows_and_trains_the_whole_embeddings(tiny_llama_dir, grown_tokenizer_dir):
    model = SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=None, tokenizer=tokenizer_cfg(grown_tokenizer_dir))
    assert model.llm.get_input_embeddings().weight.shape == (576, 64)
    assert model.llm.get_input_embeddings().weight.requires_grad


def test_a_tokenizer_the_embeddings_cover_changes_nothing(tiny_llama_dir, tiny_tokenizer):
    model = SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=LORA, tokenizer=tiny_tokenizer)
    assert base_of(model).get_input_embeddings().weight.shape[0] == 512
    assert all('lora_' in name for name, p in model.named_parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------- peft_model

def save_adapter(folder, model_dir, **lora_kwargs):
    """An adapter saved by plain peft, with nonzero weights."""
    llm = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    settings = dict(r=8, lora_alpha=16, task_type='CAUSAL_LM',
                    target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'])
    settings.update(lora_kwargs)
    peft_llm = get_peft_model(llm, LoraConfig(**settings))
    with torch.no_grad():
        for name, param in peft_llm.named_parameters():
            if 'lora_' in name:
                param.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    peft_llm.save_pretrained(folder)
    return {name: param.detach().clone() for name, param in peft_llm.named_parameters() if 'lora_' in name}


@pytest.mark.parametrize('bits', [None, 4])
def test_peft_model_loads_the_adapter_weights_as_trainable(tmp_path, tiny_llama_dir, bits, capture_log):
    log = capture_log()
    saved = save_adapter(tmp_path / 'adapter', tiny_llama_dir)
    model = SupervisedFinetune(llm=llm_cfg(tiny_llama_dir, bits), lora=LORA, peft_model=str(tmp_path / 'adapter'),
                               use_fast_path=False)
    loaded = {name[len('llm.'):]: p for name, p in model.named_parameters() if 'lora_' in name}
    assert sorted(loaded) == sorted(saved) and all(p.requires_grad for p in loaded.values())
    for name, value in saved.items():
        torch.testing.assert_close(loaded[name].detach(), value, msg=name)
    assert f'LoRA starts from the adapter {tmp_path / "adapter"} (28 tensors)' in log()


def test_an_adapter_that_disagrees_with_the_config_is_refused_in_one_line(tmp_path, tiny_llama_dir):
    save_adapter(tmp_path / 'r4', tiny_llama_dir, r=4, target_modules=['q_proj', 'v_proj'])
    with pytest.raises(ConfigError) as error:
        SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=LORA, peft_model=str(tmp_path / 'r4'))
    assert str(error.value) == (
        f"model.peft_model={tmp_path / 'r4'}: the adapter has r=4, target_modules=['q_proj', 'v_proj']; "
        "model.lora has r=8, target_modules=['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', "
        "'v_proj']; make model.lora describe the adapter")


def test_peft_model_refusals(tmp_path, tiny_llama_dir):
    save_adapter(tmp_path / 'adapter', tiny_llama_dir)
    with pytest.raises(ConfigError, match=r"the config has no model.lora \(full fine-tuning\); add "
                                          r"lora=dict\(type=LoraConfig, r=8, lora_alpha=16, "
                                          r"target_modules=\['down_proj', "):
        SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=None, peft_model=str(tmp_path / 'adapter'))
    with pytest.raises(ConfigError, match=r'not a PEFT adapter folder \(no adapter_config.json\)'):
        SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=LORA, peft_model=str(tiny_llama_dir))
    checkpoint = tmp_path / 'iter_500.pth'
    checkpoint.write_bytes(b'')
    with pytest.raises(ConfigError, match=f'a file, not a PEFT adapter folder; to start from an xft or XTuner '
                                          f'checkpoint use load_from={checkpoint}'):
        SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=LORA, peft_model=str(checkpoint))
    # Settings that do not shape the weights (dropout) may differ.
    config = json.loads((tmp_path / 'adapter' / 'adapter_config.json').read_text())
    assert config['lora_dropout'] == 0.0
    SupervisedFinetune(llm=llm_cfg(tiny_llama_dir), lora=dict(LORA, lora_dropout=0.1),
                       peft_model=str(tmp_path / 'adapter'))
