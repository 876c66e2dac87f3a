"""XTuner 0.1.23's ``xtuner.model.transformers_models``: its MoE model classes by their names.

XTuner shipped its own copies of the DeepSeek-V2 and Mixtral modelling code, adding a
``moe_implementation='shard'`` layout of the experts for ZeRO-3. transformers (5.x) now has
both models with their experts fused, so these names load transformers' own classes and say
what became of XTuner's two extra arguments (``moe_experts``).
"""
from .deepseek_v2 import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV2Model
from .mixtral import MixtralConfig, MixtralForCausalLM, MixtralModel

__all__ = ['DeepseekV2Config', 'DeepseekV2ForCausalLM', 'DeepseekV2Model', 'MixtralConfig',
           'MixtralForCausalLM', 'MixtralModel']
