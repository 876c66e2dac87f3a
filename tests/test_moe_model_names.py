"""XTuner's MoE class names (``xtuner.model.transformers_models``) load transformers' own
DeepSeek-V2 and Mixtral: the same weights and logits, XTuner's ``moe_implementation`` and
``expert_in_one_shard`` checked, a checkpoint of another type refused in one line."""
import pytest
import torch
import transformers
from helpers.models import save_tiny_moe

from xft.model import SupervisedFinetune
from xft.model.transformers_models import DeepseekV2ForCausalLM, MixtralForCausalLM
from xft.utils.errors import ConfigError

CASES = [(DeepseekV2ForCausalLM, transformers.DeepseekV2ForCausalLM, 'deepseek_v2'),
         (MixtralForCausalLM, transformers.MixtralForCausalLM, 'mixtral')]


@pytest.fixture(scope='module')
def moe_dirs(tmp_path_factory, tiny_tokenizer):
    return {kind: save_tiny_moe(tmp_path_factory.mktemp(kind), tiny_tokenizer, kind)
            for kind in ('deepseek_v2', 'mixtral')}


@pytest.mark.parametrize('xtuner_class, hf_class, kind', CASES)
def test_xtuners_shard_layout_loads_transformers_model_with_the_same_logits(moe_dirs, xtuner_class, hf_class,
                                                                           kind):
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    expected = hf_class.from_pretrained(moe_dirs[kind]).eval()(input_ids=ids).logits
    model = xtuner_class.from_pretrained(moe_dirs[kind], moe_implementation='shard', expert_in_one_shard=2,
                                         trust_remote_code=True).eval()
    assert type(model) is hf_class
    torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_a_deepseek_v2_config_as_xtuner_writes_it_trains_a_step(moe_dirs, tiny_tokenizer):
    model = SupervisedFinetune(llm=dict(type=DeepseekV2ForCausalLM.from_pretrained,
                                        pretrained_model_name_or_path=str(moe_dirs['deepseek_v2']),
                                        moe_implementation='shard', expert_in_one_shard=4,
                                        trust_remote_code=True))
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    labels = ids.clone()
    labels[0, :3] = -100
    loss = model({'input_ids': ids, 'labels': labels}, mode='loss')['loss']
    loss.backward()
    experts = [p for name, p in model.llm.named_parameters() if 'mlp.experts' in name]
    assert torch.isfinite(loss) and experts and all(p.grad is not None for p in experts)


@pytest.mark.parametrize('kwargs, message', [
    (dict(moe_implementation='sharded'), r"moe_implementation must be one of \('origin', 'shard'\), got 'sharded'$"),
    (dict(moe_implementation='shard', expert_in_one_shard=3), r'expert_in_one_shard=3 must divide the 4 routed'),
])
def test_xtuners_arguments_are_checked_in_one_line(moe_dirs, kwargs, message):
    with pytest.raises(ConfigError, match=f'^DeepseekV2ForCausalLM: {message}') as error:
        DeepseekV2ForCausalLM.from_pretrained(moe_dirs['deepseek_v2'], **kwargs)
    assert '\n' not in str(error.value)


def test_a_checkpoint_of_another_type_is_refused_in_one_line(moe_dirs, tiny_llama_dir):
    with pytest.raises(ConfigError, match=r"^DeepseekV2ForCausalLM: \S+ holds a 'mixtral' model, not "
                                          r"'deepseek_v2'; load it with AutoModelForCausalLM.from_pretrained$"):
        DeepseekV2ForCausalLM.from_pretrained(moe_dirs['mixtral'])
    with pytest.raises(ConfigError, match="holds a 'llama' model, not 'mixtral'"):
        MixtralForCausalLM.from_pretrained(tiny_llama_dir)
