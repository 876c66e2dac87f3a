"""DeepSpeed ZeRO through mmengine's FlexibleRunner: ``xft train CONFIG --deepspeed deepspeed_zero2``.

The shipped JSON files (this folder) leave the fields that the xft config already decides as
``"auto"``; :func:`fill_auto_fields` takes them from the config, so the two cannot disagree:

| DeepSpeed field | from the xft config |
| --- | --- |
| ``train_micro_batch_size_per_gpu`` | ``train_dataloader.batch_size`` |
| ``gradient_accumulation_steps`` | ``optim_wrapper.accumulative_counts`` (1) |
| ``gradient_clipping`` | ``optim_wrapper.clip_grad.max_norm`` (0: none) |
| ``fp16.enabled`` / ``bf16.enabled`` | ``AmpOptimWrapper`` with ``dtype`` float16 (its default) / bfloat16, on CUDA |

A value written out in the JSON is kept, but one that contradicts the config is refused.
"""
import json
from pathlib import Path

import torch
from mmengine.logging import print_log

from xft.utils.errors import ConfigError

SHIPPED = Path(__file__).resolve().parent
AUTO = 'auto'


def shipped_configs() -> list:
    """The names ``--deepspeed`` accepts besides a path: deepspeed_zero1, deepspeed_zero2, ..."""
    return sorted(path.stem for path in SHIPPED.glob('*.json'))


def read_deepspeed_config(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.is_file():
        path = SHIPPED / f'{Path(name_or_path).stem}.json'
    if not path.is_file():
        raise ConfigError(f'--deepspeed {name_or_path}: no such JSON file and no shipped config of that name '
                          f'(shipped: {", ".join(shipped_configs())})')
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f'{path} line {error.lineno}: {error.msg}') from None


def _precision(optim_wrapper: dict, cuda: bool) -> str:
    """'fp16', 'bf16' or 'fp32': what the config's optimizer wrapper asks for on this machine."""
    wrapper_type = optim_wrapper.get('type')
    name = wrapper_type if isinstance(wrapper_type, str) else getattr(wrapper_type, '__name__', '')
    if not name.endswith('AmpOptimWrapper') or not cuda:
        return 'fp32'
    dtype = str(optim_wrapper.get('dtype') or 'float16')
    return 'bf16' if 'bfloat16' in dtype else 'fp16'


def _settle(config: dict, key: str, value, source: str) -> None:
    if config.get(key, AUTO) == AUTO:
        config[key] = value
    elif config[key] != value:
        raise ConfigError(f'deepspeed config: {key}={config[key]!r} contradicts {source}={value!r}; '
                          f'set it to "auto" or change {source}')


def fill_auto_fields(ds_config: dict, cfg, cuda: bool = None) -> dict:
    """A copy of ``ds_config`` with its "auto" fields taken from the xft config ``cfg``.

    >>> cfg = dict(train_dataloader=dict(batch_size=2),
    ...            optim_wrapper=dict(type='AmpOptimWrapper', dtype='bfloat16', accumulative_counts=8,
    ...                               clip_grad=dict(max_norm=1.0)))
    >>> filled = fill_auto_fields(read_deepspeed_config('deepspeed_zero2'), cfg, cuda=True)
    >>> (filled['train_micro_batch_size_per_gpu'], filled['gradient_accumulation_steps'],
    ...  filled['gradient_clipping'], filled['bf16']['enabled'], filled['fp16']['enabled'])
    (2, 8, 1.0, True, False)
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    config = json.loads(json.dumps(ds_config))
    wrapper = dict(cfg.get('optim_wrapper') or {})
    _settle(config, 'train_micro_batch_size_per_gpu', int(cfg['train_dataloader']['batch_size']),
            'train_dataloader.batch_size')
    _settle(config, 'gradient_accumulation_steps', int(wrapper.get('accumulative_counts', 1)),
            'optim_wrapper.accumulative_counts')
    clip = (wrapper.get('clip_grad') or {}).get('max_norm', 0.0)
    _settle(config, 'gradient_clipping', float(clip), 'optim_wrapper.clip_grad.max_norm')
    precision = _precision(wrapper, cuda)
    for key in ('fp16', 'bf16'):
        section = config.setdefault(key, {'enabled': AUTO})
        _settle(section, 'enabled', precision == key, f'optim_wrapper ({precision})')
    return config


def use_plain_gloo_collectives() -> None:
    """On CPU, DeepSpeed compiles a shared-memory all-reduce op at its first collective (a
    C++ build of minutes, and a lock left behind if it is killed meanwhile). gloo's own
    collectives do the same job, so the op is marked unavailable, which DeepSpeed's
    ``build_shm_op`` checks before building."""
    import deepspeed.ops
    deepspeed.ops.__compatible_ops__['deepspeed_shm_comm'] = False


def use_deepspeed(cfg, name_or_path: str) -> None:
    """Turn a config into a FlexibleRunner + DeepSpeedStrategy run (in place)."""
    if cfg.get('launcher', 'none') == 'none':
        raise ConfigError('--deepspeed needs several processes: start with NPROC_PER_NODE=N xft train ... '
                          '(or torchrun ... --launcher pytorch)')
    wrapper = cfg.get('optim_wrapper') or {}
    if 'optimizer' not in wrapper:
        raise ConfigError('optim_wrapper.optimizer: DeepSpeed needs the optimizer of the config')
    ds_config = fill_auto_fields(read_deepspeed_config(name_or_path), cfg)
    if not torch.cuda.is_available():
        use_plain_gloo_collectives()
    cfg.runner_type = 'FlexibleRunner'
    from .strategy import WorldSizeCheckedDeepSpeedStrategy  # noqa: F401  (registers it)
    cfg.strategy = dict(type='WorldSizeCheckedDeepSpeedStrategy', config=ds_config,
                        # LoRA/QLoRA checkpoints hold the trainable weights only, as without DeepSpeed.
                        exclude_frozen_parameters=True)
    from .optim_wrapper import NoGradStepDeepSpeedOptimWrapper  # noqa: F401  (registers it)
    cfg.optim_wrapper = dict(type='NoGradStepDeepSpeedOptimWrapper', optimizer=wrapper['optimizer'])
    stage = ds_config.get('zero_optimization', {}).get('stage', 0)
    print_log(f'DeepSpeed ZeRO-{stage} ({name_or_path}): micro batch {ds_config["train_micro_batch_size_per_gpu"]}, '
              f'accumulation {ds_config["gradient_accumulation_steps"]}, clipping {ds_config["gradient_clipping"]}, '
              f'fp16 {ds_config["fp16"]["enabled"]}, bf16 {ds_config["bf16"]["enabled"]}', logger='current')
