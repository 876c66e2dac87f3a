"""Turn a training checkpoint into folders the Hugging Face world loads.

A checkpoint ``iter_N.pth`` holds ``{'state_dict': ..., 'meta': ..., 'optimizer': ...}``; its
state dict holds only what ``SupervisedFinetune`` trained, under the prefix ``llm.``:

* LoRA / QLoRA: ``llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight``
  and friends. Exported as a PEFT adapter folder (``adapter_config.json`` +
  ``adapter_model.safetensors``).
* full fine-tune: ``llm.model.embed_tokens.weight`` ... ``llm.lm_head.weight``. Exported as a
  full model folder (sharded safetensors + config + tokenizer).

The base model is never loaded: its architecture is built on the meta device from its
``config.json`` (no memory, no GPU, also for QLoRA: quantization changes the module classes,
never the module names, so the adapter's keys and target modules are the same). Checkpoint
tensors are then *assigned* into the meta model, so each weight lives in memory once.

This module takes a loaded config and a state dict; reading them (``xft.engine.config``,
``xft.engine.checkpoint``) is the engine's job, so the model layer imports nothing above it.

Example::

    cfg = load_config('configs/smollm2_135m_qlora_self_cognition.py')   # xft.engine.config
    require_llm(cfg)
    state = llm_state_dict(read_checkpoint_state_dict('work_dirs/x/iter_40.pth'))  # engine
    export_adapter(cfg, state, 'work_dirs/x/hf_adapter')
"""
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from xft.model.lora import build_lora_config
from xft.model.vocab import train_new_rows
from xft.registry import build_nested
from xft.utils.errors import ConfigError, UserError

CHECKPOINT_LLM_PREFIX = 'llm.'
# The training config saved beside every export (and copied by merge): it says how the
# weights were made, and chat reads its prompt_template from it.
TRAINING_CONFIG_FILENAME = 'xft_config.py'
LORA_KEY_MARKERS = ('.lora_A.', '.lora_B.', '.lora_embedding_A.', '.lora_magnitude_vector.',
                    '.trainable_tokens_delta.')
# XTuner's pth_to_hf saved fp16 unless --fp32; a config that names its dtype wins over that.
DEFAULT_EXPORT_DTYPE = torch.float16


@dataclass(frozen=True)
class LlmSource:
    """Where the base model of a config comes from, read without loading it."""

    path: str
    trust_remote_code: bool
    dtype: Optional[torch.dtype]


def require_llm(cfg):
    """Raise ConfigError unless the loaded training config declares ``model.llm``."""
    if 'model' not in cfg or 'llm' not in cfg.model:
        raise ConfigError(f'{cfg.filename or "the config"}: expected a '
                          '`model = dict(..., llm=dict(...))` entry')


def llm_state_dict(state_dict):
    """Strip ``SupervisedFinetune``'s ``llm.`` prefix; reject a state dict without it."""
    llm_keys = {k[len(CHECKPOINT_LLM_PREFIX):]: v for k, v in state_dict.items()
                if k.startswith(CHECKPOINT_LLM_PREFIX)}
    if not llm_keys:
        example = next(iter(state_dict), '<empty>')
        raise UserError(
            f'checkpoint holds no `llm.` weights (first key: {example!r}); '
            'expected a SupervisedFinetune checkpoint')
    return llm_keys


def is_lora_state_dict(state_dict):
    """True when the (prefix-stripped) state dict holds LoRA tensors."""
    return any(marker in key for key in state_dict for marker in LORA_KEY_MARKERS)


def _as_dtype(value):
    if value is None or value == 'auto':
        return None
    if isinstance(value, torch.dtype):
        return value
    built = build_nested(value)
    if isinstance(built, torch.dtype):
        return built
    raise ConfigError(f'model.llm: cannot read dtype {value!r}; expected e.g. torch.bfloat16')


def llm_source(cfg):
    """Read the base model's path, trust_remote_code and dtype from ``cfg.model.llm``."""
    llm_cfg = cfg.model.llm
    if not isinstance(llm_cfg, dict):
        raise ConfigError('model.llm: expected a dict with pretrained_model_name_or_path')
    path = llm_cfg.get('pretrained_model_name_or_path')
    if not path:
        raise ConfigError('model.llm: expected a `pretrained_model_name_or_path` entry')
    dtype = llm_cfg.get('dtype', llm_cfg.get('torch_dtype'))
    return LlmSource(path=str(path),
                     trust_remote_code=bool(llm_cfg.get('trust_remote_code', False)),
                     dtype=_as_dtype(dtype))


def build_meta_llm(source):
    """The base model's architecture on the meta device: module names, no memory.

    Quantization settings are ignored on purpose: a bitsandbytes Linear4bit and an
    ``nn.Linear`` have the same name and the same LoRA keys.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        hf_config = AutoConfig.from_pretrained(source.path,
                                               trust_remote_code=source.trust_remote_code)
    except (OSError, ValueError) as error:
        raise ConfigError(f'model.llm: cannot read the config of {source.path!r}: '
                          f'{str(error).splitlines()[0]}') from None
    hf_config.name_or_path = source.path
    with torch.device('meta'):
        model = AutoModelForCausalLM.from_config(
            hf_config, trust_remote_code=source.trust_remote_code)
    model.name_or_path = source.path
    return model


def grow_meta_to_training_vocab(cfg, meta_model):
    """Give the meta model the embedding rows training gave it (``model.tokenizer`` with more
    tokens than the base has rows; ``xft.model.vocab``). ``(old, new)`` rows, or None."""
    from xft.model.vocab import embedding_rows_for, grow_embeddings, tokenizer_length

    tokenizer = cfg.model.get('tokenizer')
    if tokenizer is None:
        return None
    rows = embedding_rows_for(tokenizer_length(tokenizer), meta_model.get_input_embeddings().weight.shape[0])
    if rows is None:
        return None
    return grow_embeddings(meta_model, rows), rows


def build_adapter_config(cfg, meta_model, base_path):
    """The ``LoraConfig`` training used, built by the same function training calls."""
    lora_cfg = cfg.model.get('lora')
    if lora_cfg is None:
        raise ConfigError('the checkpoint holds LoRA weights but the config has no model.lora')
    lora_config = build_lora_config(dict(lora_cfg) if isinstance(lora_cfg, dict) else lora_cfg,
                                    meta_model)
    lora_config.base_model_name_or_path = base_path
    return lora_config


def _assign_checked(model, tensors, what, wanted):
    """Assign checkpoint tensors into the meta model; raise when they do not fit it.

    ``wanted(key)`` says which model weights the checkpoint must provide.
    """
    own = model.state_dict()
    for key, tensor in tensors.items():
        if key in own and own[key].shape != tensor.shape:
            raise UserError(f'checkpoint does not match the config\'s {what}: {key} has shape '
                            f'{tuple(tensor.shape)}, the config builds {tuple(own[key].shape)}')
    result = model.load_state_dict(tensors, strict=False, assign=True)
    _check_loaded(result, what, wanted)
    return result


def _check_loaded(result, what, wanted):
    """Raise when the checkpoint misses weights the export needs, or has unknown ones."""
    missing = [k for k in result.missing_keys if wanted(k)]
    if result.unexpected_keys or missing:
        problem = (f'{len(result.unexpected_keys)} unknown weights, e.g. '
                   f'{result.unexpected_keys[0]!r}' if result.unexpected_keys else
                   f'{len(missing)} missing weights, e.g. {missing[0]!r}')
        raise UserError(f'checkpoint does not match the config\'s {what}: {problem}')


def export_adapter(cfg, state_dict, save_dir, dtype=None, safe_serialization=True):
    """Write a PEFT adapter folder from a LoRA checkpoint's (prefix-stripped) state dict.

    ``dtype`` casts the adapter tensors (None keeps them as trained).
    Returns the saved folder.
    """
    from peft import get_peft_model

    source = llm_source(cfg)
    meta_model = build_meta_llm(source)
    grown = grow_meta_to_training_vocab(cfg, meta_model)
    lora_config = build_adapter_config(cfg, meta_model, source.path)
    if grown is not None:
        lora_config = train_new_rows(lora_config, meta_model, *grown)
    peft_model = get_peft_model(meta_model, lora_config)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
               for k, v in state_dict.items()}
    _assign_checked(peft_model, tensors, 'LoRA adapter',
                    wanted=lambda key: any(marker in key for marker in LORA_KEY_MARKERS))
    # The meta model's frozen embeddings hold no values: only adapter weights are saved.
    peft_model.save_pretrained(str(save_dir), safe_serialization=safe_serialization,
                               save_embedding_layers=False)
    return Path(save_dir)


def export_full_model(cfg, state_dict, save_dir, dtype=None, max_shard_size='2GB',
                      safe_serialization=True):
    """Write a full HF model folder from a full fine-tune's (prefix-stripped) state dict."""
    source = llm_source(cfg)
    model = build_meta_llm(source)
    grow_meta_to_training_vocab(cfg, model)
    target_dtype = dtype or source.dtype or DEFAULT_EXPORT_DTYPE
    tensors = {k: (v.to(target_dtype) if v.is_floating_point() else v)
               for k, v in state_dict.items()}
    tied = set(getattr(model, 'all_tied_weights_keys', None) or {})
    result = _assign_checked(model, tensors, 'model', wanted=lambda key: key not in tied)
    if result.missing_keys:
        model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.device.type == 'meta']
    if still_meta:
        raise UserError(f'checkpoint lacks {len(still_meta)} weights of the model, '
                        f'e.g. {still_meta[0]!r}')
    model.config.dtype = target_dtype
    model.save_pretrained(str(save_dir), max_shard_size=max_shard_size,
                          safe_serialization=safe_serialization)
    return Path(save_dir)


def save_config_beside(cfg, save_dir, name=TRAINING_CONFIG_FILENAME):
    """Write the training config next to the export, so the result says how it was made.

    The merged config (with --cfg-options) is dumped; where mmengine cannot dump it (a config
    holding objects it cannot print), the config file itself is copied.
    """
    target = Path(save_dir) / name
    try:
        cfg.dump(str(target))
    except (SyntaxError, TypeError, ValueError):
        if not cfg.filename:
            raise
        shutil.copyfile(cfg.filename, target)
    return target


def read_training_template(folder):
    """The ``prompt_template`` (a dict or a dotted name) of the training config saved in
    ``folder``; None without one.

    Lets ``xft chat`` encode exactly as training did without being told the template name.
    """
    config_file = Path(folder) / TRAINING_CONFIG_FILENAME
    if not config_file.is_file():
        return None
    from mmengine.config import Config
    try:
        template = Config.fromfile(str(config_file)).get('prompt_template')
    except Exception as error:  # a dumped config that no longer loads: say which, in one line
        raise ConfigError(f'{config_file}: cannot read its prompt_template '
                          f'({type(error).__name__}: {error}); pass --prompt-template') from None
    # mmengine dumps a template taken from PROMPT_TEMPLATE as its dotted name
    # ('xft.utils.PROMPT_TEMPLATE.chatml'); resolve_template reads both forms.
    if not template:
        return None
    return dict(template) if isinstance(template, dict) else template


def export_weights(cfg, state_dict, save_dir, dtype=None, max_shard_size='2GB', safe_serialization=True):
    """Write a (prefix-stripped) trained state dict as a PEFT adapter (LoRA weights) or a full
    model folder. Returns True for an adapter. pth_to_hf and ``HFCheckpointHook`` write through it."""
    if is_lora_state_dict(state_dict):
        export_adapter(cfg, state_dict, save_dir, dtype=dtype, safe_serialization=safe_serialization)
        return True
    export_full_model(cfg, state_dict, save_dir, dtype=dtype, max_shard_size=max_shard_size,
                      safe_serialization=safe_serialization)
    return False


def save_tokenizer_and_config(cfg, save_dir, lora):
    """Beside the weights: the config's tokenizer (with a chat_template rendering its prompt
    template, when there is one) and the training config itself."""
    from xft.model.chat_template import (add_stop_tokens_to_generation_config,
                                         save_tokenizer_with_chat_template)

    if cfg.get('tokenizer') is not None:
        tokenizer = build_nested(dict(cfg.tokenizer))
        template = cfg.get('prompt_template')
        wrote = save_tokenizer_with_chat_template(tokenizer, template, save_dir)
        if template is not None and not wrote:
            print('      (the prompt template defers to the tokenizer\'s own chat_template)')
        if template is not None:   # an adapter's starts from its base model's
            add_stop_tokens_to_generation_config(
                save_dir, template, tokenizer, base=llm_source(cfg).path if lora else None)
    save_config_beside(cfg, save_dir)
