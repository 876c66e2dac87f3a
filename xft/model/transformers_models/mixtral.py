"""``xtuner.model.transformers_models.mixtral``: Mixtral through transformers' class."""
import transformers

from .moe_experts import load_moe_model

MixtralConfig = transformers.MixtralConfig
MixtralModel = transformers.MixtralModel


class MixtralForCausalLM(transformers.MixtralForCausalLM):
    """XTuner's name; ``from_pretrained`` takes its ``moe_implementation`` and
    ``expert_in_one_shard`` and returns transformers' ``MixtralForCausalLM``."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return load_moe_model(transformers.MixtralForCausalLM, pretrained_model_name_or_path, *args,
                              experts_key='num_local_experts', **kwargs)
