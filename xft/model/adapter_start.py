"""Continue training a saved PEFT adapter: ``SupervisedFinetune(peft_model=DIR)``.

``DIR`` is a PEFT LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``),
such as ``xft convert pth_to_hf`` writes or any peft user publishes. The config's ``model.lora``
must describe the same adapter (rank, alpha, targets and the other settings that shape its
weights); its weights are then loaded into the freshly attached LoRA layers, which stay
trainable. LoRA dropout may differ: it shapes training, not the weights.

A config without ``model.lora`` is refused rather than completed from the adapter: the config
stays the one record of what trained (pth_to_hf, merge and the dumped config read
``model.lora``), and ``lora=None`` means full fine-tuning in XTuner's vocabulary. The error
spells the ``lora`` dict to add.

XTuner 0.1.23 read ``peft_model`` as an mmengine checkpoint of the whole model; such a file is
refused with the way to start from it (``load_from``) or to convert it first.
"""
from pathlib import Path

from xft.utils.errors import ConfigError

ADAPTER_CONFIG = 'adapter_config.json'
# LoraConfig fields that change which weights an adapter has or what they mean.
SHAPING_FIELDS = ('r', 'lora_alpha', 'target_modules', 'bias', 'use_rslora', 'use_dora', 'modules_to_save',
                  'trainable_token_indices', 'rank_pattern', 'alpha_pattern', 'layers_to_transform')
ADAPTER_KEY_MARKERS = ('lora_', 'trainable_tokens_delta', 'modules_to_save')


def read_adapter_config(folder):
    """The ``LoraConfig`` saved in ``folder``; one clear line when it is not a LoRA adapter."""
    where = f'model.peft_model={folder}'
    path = Path(folder)
    if path.is_file():
        raise ConfigError(f'{where}: a file, not a PEFT adapter folder; to start from an xft or XTuner '
                          f'checkpoint use load_from={folder} (weights) or --resume {folder}, or convert it '
                          f'with `xft convert pth_to_hf CONFIG {folder} DIR` and pass DIR')
    if not (path / ADAPTER_CONFIG).is_file():
        raise ConfigError(f'{where}: not a PEFT adapter folder (no {ADAPTER_CONFIG})')
    from peft import LoraConfig, PeftConfig
    try:
        config = PeftConfig.from_pretrained(str(path))
    except (ValueError, TypeError, OSError) as error:
        raise ConfigError(f'{where}: cannot read {ADAPTER_CONFIG}: {str(error).splitlines()[0]}') from None
    if not isinstance(config, LoraConfig):
        raise ConfigError(f'{where}: a {type(config).__name__} adapter; xft continues LoRA adapters only')
    return config


def _comparable(field, value):
    if field in ('target_modules', 'modules_to_save', 'layers_to_transform') and value is not None \
            and not isinstance(value, (str, int)):
        return frozenset(value) or None
    if field == 'trainable_token_indices' and isinstance(value, dict):
        return {name: tuple(rows) for name, rows in value.items()} or None
    if field in ('rank_pattern', 'alpha_pattern'):
        return dict(value) or None if value else None
    return value


def check_adapter_agrees(adapter, lora_config, folder) -> None:
    """One line naming every shaping setting where the adapter and ``model.lora`` differ."""
    differ = [field for field in SHAPING_FIELDS if _comparable(field, getattr(adapter, field, None))
              != _comparable(field, getattr(lora_config, field, None))]
    if differ:
        adapter_values = ', '.join(f'{field}={_shown(getattr(adapter, field, None))}' for field in differ)
        config_values = ', '.join(f'{field}={_shown(getattr(lora_config, field, None))}' for field in differ)
        raise ConfigError(f'model.peft_model={folder}: the adapter has {adapter_values}; model.lora has '
                          f'{config_values}; make model.lora describe the adapter')


def _shown(value):
    return sorted(value) if isinstance(value, (set, frozenset)) else value


def refuse_without_lora(folder):
    """model.peft_model with lora=None: say which lora dict to add."""
    adapter = read_adapter_config(folder)
    targets = sorted(adapter.target_modules) if not isinstance(adapter.target_modules, str) \
        else adapter.target_modules
    raise ConfigError(f'model.peft_model={folder}: the config has no model.lora (full fine-tuning); add '
                      f'lora=dict(type=LoraConfig, r={adapter.r}, lora_alpha={adapter.lora_alpha}, '
                      f'target_modules={targets!r}, task_type=\'CAUSAL_LM\') to model')


def load_adapter_weights(peft_llm, folder) -> int:
    """Load the adapter's weights into the (already attached) ``default`` adapter of
    ``peft_llm``; every adapter weight of the model must be covered. Returns how many tensors."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    where = f'model.peft_model={folder}'
    weights = load_peft_weights(str(folder), device='cpu')
    try:
        result = set_peft_model_state_dict(peft_llm, weights, adapter_name='default')
    except RuntimeError as error:  # a shape that does not fit
        detail = next((line.strip() for line in str(error).splitlines() if 'size mismatch' in line),
                      str(error).splitlines()[0])
        raise ConfigError(f'{where}: its weights do not fit the model: {detail}') from None
    unexpected = [key for key in result.unexpected_keys if any(m in key for m in ADAPTER_KEY_MARKERS)]
    missing = [key for key in result.missing_keys if any(m in key for m in ADAPTER_KEY_MARKERS)]
    if unexpected or missing:
        example = (unexpected or missing)[0]
        raise ConfigError(f'{where}: {len(unexpected)} weights the model has no place for and {len(missing)} '
                          f'adapter weights it lacks (e.g. {example!r}); was it trained on this base model?')
    return len(weights)
