"""``from_pretrained`` for XTuner's MoE class names: its extra arguments checked, then
transformers' own class loaded.

``llm=dict(type=DeepseekV2ForCausalLM.from_pretrained, pretrained_model_name_or_path=...,
moe_implementation='shard', expert_in_one_shard=8, trust_remote_code=True)``

- ``moe_implementation``: 'origin' (one module per expert) or 'shard' (XTuner grouped
  ``expert_in_one_shard`` experts into one tensor so that ZeRO-3 gathers fewer, larger
  pieces). transformers' classes hold the experts fused in one tensor per layer, which is what
  'shard' was for; the weights and the outputs are the same either way.
- ``expert_in_one_shard`` must divide the model's routed experts, as in XTuner.
- ``trust_remote_code``: the repository's own modelling code is not run; transformers' class
  for the model type is (the checkpoint's expert weights are fused as they load).
"""
from mmengine.logging import print_log
from transformers import PretrainedConfig

from xft.utils.errors import ConfigError

MOE_IMPLEMENTATIONS = ('origin', 'shard')


def load_moe_model(hf_class, pretrained_model_name_or_path, *args, moe_implementation='origin',
                   expert_in_one_shard=None, experts_key='n_routed_experts', **kwargs):
    """``hf_class.from_pretrained`` after checking XTuner's arguments against the checkpoint."""
    name = hf_class.__name__
    if moe_implementation not in MOE_IMPLEMENTATIONS:
        raise ConfigError(f'{name}: moe_implementation must be one of {MOE_IMPLEMENTATIONS}, '
                          f'got {moe_implementation!r}')
    config = _config_dict(pretrained_model_name_or_path, kwargs)
    expected = hf_class.config_class.model_type
    if config.get('model_type') != expected:
        raise ConfigError(f'{name}: {pretrained_model_name_or_path} holds a '
                          f'{config.get("model_type")!r} model, not {expected!r}; load it with '
                          'AutoModelForCausalLM.from_pretrained')
    experts = config.get(experts_key)
    if moe_implementation == 'shard':
        if expert_in_one_shard is not None and (not isinstance(expert_in_one_shard, int) or expert_in_one_shard < 1
                                                or experts % expert_in_one_shard):
            raise ConfigError(f'{name}: expert_in_one_shard={expert_in_one_shard!r} must divide the '
                              f'{experts} routed experts of {pretrained_model_name_or_path}')
        print_log(f"{name}: moe_implementation='shard' -> transformers' {name}, whose {experts} experts "
                  'per layer are already one fused tensor (the same weights and outputs)', logger='current')
    if kwargs.pop('trust_remote_code', False):
        print_log(f"{name}: the repository's own modelling code is not run (trust_remote_code); "
                  f"transformers' {name} loads the checkpoint", logger='current')
    return hf_class.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def _config_dict(path, kwargs) -> dict:
    options = {key: kwargs[key] for key in ('revision', 'cache_dir', 'token', 'local_files_only')
               if key in kwargs}
    config, _ = PretrainedConfig.get_config_dict(str(path), **options)
    return config
