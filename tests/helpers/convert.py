"""Helpers for the conversion, merge and chat tests: a training config on the tiny Llama and
checkpoints made without a runner (``{'state_dict': model.state_dict(), 'meta': {}}``, which is
what mmengine's CheckpointHook stores under those keys)."""
from pathlib import Path

import torch

CONFIG_TEMPLATE = '''\
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from xft.model import SupervisedFinetune
from xft.utils import PROMPT_TEMPLATE

pretrained_model_name_or_path = {model_dir!r}
prompt_template = PROMPT_TEMPLATE.{template}

tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path=pretrained_model_name_or_path,
    padding_side='right')

model = dict(
    type=SupervisedFinetune,
    use_activation_checkpointing=False,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=pretrained_model_name_or_path,
        torch_dtype=torch.{dtype}{quantization}),
    lora={lora})
'''

LORA_DICT = ("dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.0, bias='none', "
             "task_type='CAUSAL_LM')")
QUANTIZATION = (",\n        quantization_config=dict(type=BitsAndBytesConfig, load_in_4bit=True, "
                "bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True, "
                "bnb_4bit_compute_dtype=torch.float32)")


def write_config(path, model_dir, kind='lora', template='chatml', dtype='float32'):
    """Write an XTuner-style config for ``kind`` in ('lora', 'qlora', 'full')."""
    text = CONFIG_TEMPLATE.format(
        model_dir=str(model_dir), template=template, dtype=dtype,
        quantization=QUANTIZATION if kind == 'qlora' else '',
        lora='None' if kind == 'full' else LORA_DICT)
    Path(path).write_text(text)
    return Path(path)


def build_model_from_config(config_path):
    """The SupervisedFinetune a config declares, built the way the runner builds it."""
    from mmengine.config import Config

    from xft.registry import build_nested
    return build_nested(dict(Config.fromfile(str(config_path)).model))


def perturb_trainable(model, seed=1, scale=0.05):
    """Move every trainable weight away from its init, so an adapter changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def save_checkpoint(model, path):
    torch.save({'state_dict': model.state_dict(), 'meta': {'iter': 1}}, str(path))
    return Path(path)


def make_checkpoint(tmp_path, model_dir, kind, template='chatml'):
    """(config path, checkpoint path, trained model) for a tiny run of ``kind``."""
    config = write_config(tmp_path / f'{kind}_cfg.py', model_dir, kind, template)
    model = build_model_from_config(config)
    perturb_trainable(model)
    checkpoint = save_checkpoint(model, tmp_path / f'{kind}_iter_1.pth')
    return config, checkpoint, model


SAMPLE_TEXT = ('First Citizen: Before we proceed any further, hear me speak. '
               'All: Speak, speak.')


def run_toy_training(model, tokenizer, work_dir, samples, max_iters, checkpoint_interval,
                     custom_hooks=()):
    """Train ``model`` for a few iterations with an in-process mmengine Runner (a unique
    experiment name keeps mmengine's per-name singletons apart); returns the runner."""
    import uuid

    from mmengine.dataset import DefaultSampler
    from mmengine.hooks import CheckpointHook, LoggerHook
    from mmengine.optim import OptimWrapper
    from mmengine.runner import Runner
    from torch.optim import AdamW

    from xft.dataset.collate_fns import default_collate_fn
    from xft.engine.runner import TrainLoop
    runner = Runner(
        model=model, work_dir=str(work_dir), experiment_name=f'xft_test_{uuid.uuid4().hex}',
        train_dataloader=dict(batch_size=2, num_workers=0, dataset=samples,
                              sampler=dict(type=DefaultSampler, shuffle=False),
                              collate_fn=dict(type=default_collate_fn,
                                              pad_index=tokenizer.pad_token_id)),
        optim_wrapper=dict(type=OptimWrapper,
                           optimizer=dict(type=AdamW, lr=1e-2, weight_decay=0.0)),
        train_cfg=dict(type=TrainLoop, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type=CheckpointHook, by_epoch=False,
                                           interval=checkpoint_interval),
                           logger=dict(type=LoggerHook, interval=1)),
        custom_hooks=list(custom_hooks),
        env_cfg=dict(dist_cfg=dict(backend='gloo')), log_level='INFO',
        randomness=dict(seed=0))
    runner.train()
    return runner


def chatml_samples(tokenizer, pairs):
    """Training samples (input_ids, labels) of one-turn chatml conversations."""
    from xft.dataset.conversation import normalize_conversation
    from xft.dataset.encode import encode_conversation
    from xft.dataset.map_fns.template import template_map_fn
    from xft.utils import PROMPT_TEMPLATE
    samples = []
    for question, answer in pairs:
        turns = normalize_conversation([{'input': question, 'output': answer}], 'test', False)
        templated = template_map_fn({'conversation': turns}, PROMPT_TEMPLATE.chatml)
        encoded = encode_conversation(templated['conversation'], tokenizer, max_length=64)
        samples.append({'input_ids': encoded['input_ids'], 'labels': encoded['labels']})
    return samples
