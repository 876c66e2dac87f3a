# InternLM-7B, QLoRA (4-bit NF4 + LoRA r=64) on openassistant-guanaco, XTuner's defaults.
#
#   python tools/train.py configs/internlm_7b_qlora_oasst1.py
#   xft train internlm_7b_qlora_oasst1 --cfg-options train_dataloader.dataset.dataset.path=DIR
#
# Offline, point the model at a local folder and the data at a local copy, e.g.
#   --cfg-options pretrained_model_name_or_path=/path/to/llama \
#       model.llm.pretrained_model_name_or_path=/path/to/llama \
#       tokenizer.pretrained_model_name_or_path=/path/to/llama \
#       train_dataloader.dataset.dataset.path=../shared/data/oasst1_guanaco
import torch
from datasets import load_dataset
from mmengine.dataset import DefaultSampler
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,
                            LoggerHook, ParamSchedulerHook)
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from peft import LoraConfig
from torch.optim import AdamW
from transformers import (AutoModelForCausalLM, AutoTokenizer,
                          BitsAndBytesConfig)

from xft.dataset import process_hf_dataset
from xft.dataset.collate_fns import default_collate_fn
from xft.dataset.map_fns import oasst1_map_fn, template_map_fn_factory
from xft.engine.hooks import DatasetInfoHook, EvaluateChatHook
from xft.engine.runner import TrainLoop
from xft.model import SupervisedFinetune
from xft.utils import PROMPT_TEMPLATE

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
# A base (not chat) model: it learns the dialogue format from the data.
pretrained_model_name_or_path = 'internlm/internlm-7b'
# True: packed samples attend only to themselves through variable-length attention.
use_varlen_attn = False

# Data
# openassistant-guanaco: '### Human: ... ### Assistant: ...' text rows.
data_path = 'timdettmers/openassistant-guanaco'
# The base model has no chat format of its own, so the plain default template.
prompt_template = PROMPT_TEMPLATE.default
# Tokens per training row; packing fills each row to this length.
max_length = 2048
# Pack several conversations into each row so no compute goes to padding.
pack_to_max_length = True

# Scheduler & Optimizer
batch_size = 1  # rows per device per step
# 16 rows per optimizer step: an effective batch of 16 x 2048 tokens on one GPU.
accumulative_counts = 16
dataloader_num_workers = 0
# Three passes over ~10k conversations.
max_epochs = 3
optim_type = AdamW
# The QLoRA paper's rate for 7B models at r=64.
lr = 2e-4
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # gradient clipping
# 3% of the steps warm the rate up before the cosine decay.
warmup_ratio = 0.03

# Save
save_steps = 500
save_total_limit = 2  # keep the newest 2 checkpoints (-1 keeps all)

# Evaluate the generation performance during training
evaluation_freq = 500
SYSTEM = ''
evaluation_inputs = [
    '请给我介绍五个上海的景点', 'Please tell me five scenic spots in Shanghai'
]

#######################################################################
#                      PART 2  Model & Tokenizer                      #
#######################################################################
tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path=pretrained_model_name_or_path,
    trust_remote_code=True,
    padding_side='right')

model = dict(
    type=SupervisedFinetune,
    use_varlen_attn=use_varlen_attn,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=pretrained_model_name_or_path,
        trust_remote_code=True,
        torch_dtype=torch.float16,
        quantization_config=dict(
            type=BitsAndBytesConfig,
            load_in_4bit=True,
            load_in_8bit=False,
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=torch.float16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type='nf4')),
    lora=dict(
        type=LoraConfig,
        r=64,
        lora_alpha=16,
        lora_dropout=0.1,
        bias='none',
        task_type='CAUSAL_LM'))

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
train_dataset = dict(
    type=process_hf_dataset,
    dataset=dict(type=load_dataset, path=data_path),
    tokenizer=tokenizer,
    max_length=max_length,
    dataset_map_fn=oasst1_map_fn,
    template_map_fn=dict(
        type=template_map_fn_factory, template=prompt_template),
    remove_unused_columns=True,
    shuffle_before_pack=True,
    pack_to_max_length=pack_to_max_length,
    use_varlen_attn=use_varlen_attn)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=train_dataset,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=default_collate_fn, use_varlen_attn=use_varlen_attn))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
# On a machine without CUDA, tools/train.py swaps AmpOptimWrapper for OptimWrapper.
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(
        type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale='dynamic',
    dtype='float16')

# Linear warm-up, then cosine decay to zero; both counted in iterations.
param_scheduler = [
    dict(
        type=LinearLR,
        start_factor=1e-5,
        by_epoch=True,
        begin=0,
        end=warmup_ratio * max_epochs,
        convert_to_iter_based=True),
    dict(
        type=CosineAnnealingLR,
        eta_min=0.0,
        by_epoch=True,
        begin=warmup_ratio * max_epochs,
        end=max_epochs,
        convert_to_iter_based=True)
]

# Epochs are turned into iterations; checkpoints and logs count iterations.
train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
# Sample answers before, during and after training.
custom_hooks = [
    dict(type=DatasetInfoHook, tokenizer=tokenizer),
    dict(
        type=EvaluateChatHook,
        tokenizer=tokenizer,
        every_n_iters=evaluation_freq,
        evaluation_inputs=evaluation_inputs,
        system=SYSTEM,
        prompt_template=prompt_template)
]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    # iteration, loss, learning rate and time left, every 10 iterations
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(
        type=CheckpointHook,
        by_epoch=False,
        interval=save_steps,
        max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # nccl on GPUs; tools/train.py uses gloo on a CPU-only machine.
    dist_cfg=dict(backend='nccl'),
)

visualizer = None
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
