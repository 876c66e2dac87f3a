# A 20-iteration run on a tiny random Llama: the test suite's end-to-end config.
# tests/test_train_e2e.py fills in the paths (@MODEL@, @DATA@) and the method:
# @LORA@ is `lora` or None (full fine-tuning), @QUANTIZATION@ `quantization_config` or None.
import torch
from datasets import load_dataset
from mmengine.dataset import DefaultSampler
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,
                            LoggerHook, ParamSchedulerHook)
from mmengine.optim import AmpOptimWrapper, LinearLR
from peft import LoraConfig
from torch.optim import AdamW
from transformers import (AutoModelForCausalLM, AutoTokenizer,
                          BitsAndBytesConfig)

from xft.dataset import process_hf_dataset
from xft.dataset.collate_fns import default_collate_fn
from xft.dataset.map_fns import alpaca_map_fn, template_map_fn_factory
from xft.engine.runner import TrainLoop
from xft.model import SupervisedFinetune
from xft.utils import PROMPT_TEMPLATE

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
pretrained_model_name_or_path = '@MODEL@'
data_path = '@DATA@'
prompt_template = PROMPT_TEMPLATE.chatml
max_length = 128
pack_to_max_length = False
batch_size = 2
accumulative_counts = 1
max_iters = 20
lr = 3e-3
save_steps = 10

#######################################################################
#                      PART 2  Model & Tokenizer                      #
#######################################################################
tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path=pretrained_model_name_or_path,
    padding_side='right')

lora = dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.0, bias='none',
            task_type='CAUSAL_LM')
quantization_config = dict(
    type=BitsAndBytesConfig,
    load_in_4bit=True,
    bnb_4bit_compute_dtype=torch.float32,
    bnb_4bit_use_double_quant=True,
    bnb_4bit_quant_type='nf4')

model = dict(
    type=SupervisedFinetune,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=pretrained_model_name_or_path,
        torch_dtype=torch.float32,
        quantization_config=@QUANTIZATION@),
    lora=@LORA@)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    dataset=dict(
        type=process_hf_dataset,
        dataset=dict(type=load_dataset, path='json', data_files=dict(train=data_path)),
        tokenizer=tokenizer,
        max_length=max_length,
        dataset_map_fn=alpaca_map_fn,
        template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
        max_dataset_length=64,
        remove_unused_columns=True,
        shuffle_before_pack=True,
        pack_to_max_length=pack_to_max_length,
        map_num_proc=1),
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=default_collate_fn))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(type=AdamW, lr=lr, betas=(0.9, 0.999), weight_decay=0),
    clip_grad=dict(max_norm=1, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale='dynamic',
    dtype='float16')

param_scheduler = [dict(type=LinearLR, start_factor=0.1, by_epoch=False, begin=0, end=5)]

train_cfg = dict(type=TrainLoop, max_iters=max_iters)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=1),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps, max_keep_ckpts=3),
    sampler_seed=dict(type=DistSamplerSeedHook),
)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
visualizer = None
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=42, deterministic=False)
# window_size=1: each logged loss is that iteration's own, not a 10-iteration mean.
log_processor = dict(by_epoch=False, window_size=1)
