"""``xtuner.model.transformers_models.deepseek_v2``: DeepSeek-V2 through transformers' class."""
import transformers

from .moe_experts import load_moe_model

DeepseekV2Config = transformers.DeepseekV2Config
DeepseekV2Model = transformers.DeepseekV2Model


class DeepseekV2ForCausalLM(transformers.DeepseekV2ForCausalLM):
    """XTuner's name; ``from_pretrained`` takes its ``moe_implementation`` and
    ``expert_in_one_shard`` and returns transformers' ``DeepseekV2ForCausalLM``."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return load_moe_model(transformers.DeepseekV2ForCausalLM, pretrained_model_name_or_path, *args,
                              **kwargs)
