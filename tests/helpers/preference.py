"""Helpers for the preference tests: small pair sets cut from the shared data, model configs.

The pairs come from /work/shared/data/preference/dpo_zh_demo_250.json (LLaMA-Factory's
DPO-En-Zh demo, Apache-2.0; short Chinese prompts, so a 160-token cut keeps the answers).
"""
import datasets
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from xft.dataset.map_fns import sharegpt_preference_map_fn, template_map_fn_factory
from xft.dataset.preference_dataset import build_preference_dataset
from xft.utils import PROMPT_TEMPLATE

ZH_PAIRS = 'preference/dpo_zh_demo_250.json'
EN_PAIRS = 'preference/dpo_en_demo_250.json'
LORA = dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.0, task_type='CAUSAL_LM')


def llm_cfg(path, dtype='torch.float32'):
    return dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(path),
                torch_dtype=dtype)


def pair_rows(shared_data, tokenizer, count=6, max_length=160, **options):
    """Encoded pairs (one per row) of the first shared Chinese rows that fit."""
    datasets.disable_progress_bars()
    options = dict(dict(dataset_map_fn=sharegpt_preference_map_fn,
                        template_map_fn=dict(type=template_map_fn_factory,
                                             template=PROMPT_TEMPLATE.chatml),
                        max_length=max_length), **options)
    data = build_preference_dataset(str(shared_data / ZH_PAIRS), tokenizer=tokenizer, **options)
    rows = [data[i] for i in range(len(data))]
    return rows if count is None else rows[:count]
