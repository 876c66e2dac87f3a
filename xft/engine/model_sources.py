"""The models a config names are there: checked before anything loads, in one line if not.

Every ``pretrained_model_name_or_path`` in a config (the model, the data pipeline's tokenizer,
the hooks' tokenizers) is a local folder, a hub id in the local cache, or a hub id to download.
A folder must exist (and hold a ``config.json`` where it is the model); a hub id needs the hub.
When the hub is off (``HF_HUB_OFFLINE``) or a quick probe cannot reach it, a model that is not
cached ends the command in one line that names it and the ways on; when every model is cached,
the process goes offline (``xft.utils.hub.go_offline``) so they load at once, without ~50 s of
retries.
"""
from pathlib import Path

from mmengine.logging import print_log

from xft.utils.errors import ConfigError
from xft.utils.hub import HubMissing, go_offline, is_cached, looks_like_hub_id, offline_reason, probe_hub

MODEL_KEY = 'pretrained_model_name_or_path'


def named_models(cfg) -> dict:
    """{model name or folder: [dotted keys that hold it]} of every ``pretrained_model_name_or_path``
    in what a command builds: the Runner's entries (model, train_dataloader, hooks ...) and the
    ``tokenizer`` a conversion saves. PART 1 variables (``pretrained_model_name_or_path``,
    ``train_dataset``) only fed those entries, which may have been overridden since."""
    from xft.engine.cfg_options import runner_keys
    built = runner_keys() | {'tokenizer'}
    found = {}
    for key, value in dict.items(cfg._cfg_dict):
        if key in built:
            _collect(value, f'{key}.', found)
    return found


def _collect(node, prefix, found):
    if isinstance(node, dict):
        for key, value in dict.items(node):
            if key == MODEL_KEY and isinstance(value, str):
                found.setdefault(value, []).append(f'{prefix}{key}')
            else:
                _collect(value, f'{prefix}{key}.', found)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            _collect(value, f'{prefix}{index}.', found)


def check_model_sources(cfg, config_path) -> None:
    """Raise ConfigError, in one line, when a model the config names cannot be had."""
    models = named_models(cfg)
    hub_ids = []
    for name, keys in models.items():
        folder = Path(name).expanduser()
        if folder.is_dir():
            _check_model_folder(folder, keys)
        elif looks_like_hub_id(name):
            hub_ids.append(name)
        else:
            raise ConfigError(f'{name}: no such model folder (set in {", ".join(keys)} of {config_path})')
    missing = [name for name in hub_ids if not is_cached(name)]
    offline = offline_reason(datasets=False)
    if not hub_ids or not missing and offline:
        return
    reason = offline or _probe(missing or hub_ids)
    if reason is None:
        return
    if missing:
        raise ConfigError(unreachable_message(missing, models, reason, config_path,
                                              MODEL_KEY in cfg._cfg_dict))
    go_offline()
    print_log(f'the Hugging Face hub cannot be reached ({reason}); using the cached '
              f'{", ".join(hub_ids)} (offline mode for this run)', logger='current')


def _probe(names):
    try:
        return probe_hub(names[0])
    except HubMissing as error:
        raise ConfigError(f'{names[0]}: not a local folder, and {error}') from None


def _check_model_folder(folder: Path, keys) -> None:
    """The model's own folder must be a Hugging Face model (tokenizer folders need no config)."""
    if not any(key.endswith(f'llm.{MODEL_KEY}') for key in keys) or (folder / 'config.json').is_file():
        return
    if (folder / 'adapter_config.json').is_file():
        raise ConfigError(f'{folder}: a PEFT adapter folder, not a model folder; point {keys[0]} at '
                          'the base model the adapter was trained on')
    raise ConfigError(f'{folder}: no config.json in this folder; expected a Hugging Face model '
                      'folder (config.json and the weights)')


def unreachable_message(names, models, reason, config_path, has_variable) -> str:
    """One line: which model could not be reached, why, and the ways on."""
    keys = [key for name in names for key in models[name]]
    if has_variable:  # a PART 1 variable: one override reaches every entry built from it
        where = (f"point PART 1's {MODEL_KEY} in {config_path} at a local model folder, or pass "
                 f'--cfg-options {MODEL_KEY}=DIR')
    else:
        where = 'pass a local model folder with --cfg-options ' + ' '.join(f'{key}=DIR' for key in keys)
    listed = ', '.join(repr(name) for name in names)
    return (f'cannot load the model {listed}: not a local folder, not in the Hugging Face cache, '
            f'and the hub cannot be reached ({reason}); either {where}, or connect to the network '
            '(HF_ENDPOINT=URL for a mirror)')
