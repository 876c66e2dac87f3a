# Yi-6B (base), QLoRA (4-bit NF4 base + LoRA r=64),
# on Alpaca (tatsu-lab/alpaca, 52k English instructions), 3 epochs.
#
#   xft train yi_6b_qlora_alpaca_e3
# a trial run first: 3 iterations, each logged, the loss curve drawn, no evaluations:
#   xft train yi_6b_qlora_alpaca_e3 --max-iters 3
# without the hub, on a local model folder and one local data file:
#   xft train yi_6b_qlora_alpaca_e3 --max-iters 3 \
#       --cfg-options pretrained_model_name_or_path=DIR data_path=FILE
# on 8 GPUs of one machine:
#   NPROC_PER_NODE=8 xft train yi_6b_qlora_alpaca_e3
# a copy to edit (PART 1), then train the copy:
#   xft copy-cfg yi_6b_qlora_alpaca_e3 .
#
# Written by `python -m xft.tools.gen_configs`. PARTs 2-5 are the shared `qlora`
# body, identical in every zoo config of that kind (tests/test_configs_zoo.py checks it);
# what makes this config this one is PART 1.
import torch
from datasets import load_dataset
from mmengine.dataset import DefaultSampler
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,
                            LoggerHook, ParamSchedulerHook)
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from mmengine.visualization import LocalVisBackend, Visualizer
from peft import LoraConfig
from torch.optim import AdamW
from transformers import (AutoModelForCausalLM, AutoTokenizer,
                          BitsAndBytesConfig)

from xft.dataset import process_hf_dataset
from xft.dataset.collate_fns import default_collate_fn
from xft.dataset.map_fns import alpaca_map_fn, template_map_fn_factory
from xft.engine.hooks import DatasetInfoHook, EvaluateChatHook
from xft.engine.hooks.plot_hook import LossCurveHook, TensorboardBackend
from xft.engine.runner import TrainLoop
from xft.model import SupervisedFinetune
from xft.utils import PROMPT_TEMPLATE

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
# Yi-6B (base) from the Hugging Face hub, or the path of a local copy.
pretrained_model_name_or_path = '01-ai/Yi-6B'
# bf16 has fp32's range, so no loss scaling; torch.float16 on GPUs before Ampere (no bf16).
torch_dtype = torch.bfloat16
# None: LoRA on every linear layer but the output head (as the QLoRA paper).
lora_target_modules = None
# Dropout on the input of each LoRA adapter: a regulariser against overfitting small data
# (XTuner's 0.1; 0 turns it off). The fused fast path supports it.
lora_dropout = 0.1

# Data
# Hub name, or a local .json/.jsonl file or folder in the same layout.
data_path = 'tatsu-lab/alpaca'
# Rows hold 'instruction', 'input' (may be empty) and 'output'.
dataset_map_fn = alpaca_map_fn
# A base model has no chat format of its own; the plain default template teaches one.
prompt_template = PROMPT_TEMPLATE.default
# Tokens per training row; packing fills each row to this length.
max_length = 2048
# Pack several samples into each row so no compute goes to padding; packed samples
# never attend to each other.
pack_to_max_length = True

# Scheduler & Optimizer
batch_size = 1  # rows per device per step
# 16 rows per optimizer step on one GPU; divide it by the GPU count to keep the
# same effective batch when you add GPUs.
accumulative_counts = 16
dataloader_num_workers = 0
# Passes over the data (as in XTuner's configs for this set).
max_epochs = 3
optim_type = AdamW
# The QLoRA paper's rate for 7B-class models at r=64.
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
# Alpaca rows carry no system prompt, so the samples are asked without one too.
SYSTEM = ''
evaluation_inputs = [
    '请给我介绍五个上海的景点',
    'Please tell me five scenic spots in Shanghai',
]

# Logging
# True: also write TensorBoard event files (`pip install tensorboard`; then
# `tensorboard --logdir work_dirs`). Scalars always go to vis_data/scalars.json.
use_tensorboard = False

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
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=pretrained_model_name_or_path,
        trust_remote_code=True,
        torch_dtype=torch_dtype,
        quantization_config=dict(
            type=BitsAndBytesConfig,
            load_in_4bit=True,
            load_in_8bit=False,
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type='nf4')),
    lora=dict(
        type=LoraConfig,
        r=64,
        lora_alpha=16,
        lora_dropout=lora_dropout,
        target_modules=lora_target_modules,
        bias='none',
        task_type='CAUSAL_LM'))

#######################################################################
#                    PART 3  Dataset & Dataloader                     #
#######################################################################
train_dataset = dict(
    type=process_hf_dataset,
    dataset=dict(type=load_dataset, path=data_path),
    tokenizer=tokenizer,
    max_length=max_length,
    dataset_map_fn=dataset_map_fn,
    template_map_fn=dict(
        type=template_map_fn_factory, template=prompt_template),
    remove_unused_columns=True,
    shuffle_before_pack=True,
    pack_to_max_length=pack_to_max_length)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=train_dataset,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=default_collate_fn))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
# Mixed precision in the model's dtype on GPUs; without CUDA, xft train swaps in the
# plain OptimWrapper.
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(
        type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale='dynamic',
    dtype=torch_dtype)

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
custom_hooks = [
    # Token counts and one decoded sample before training starts.
    dict(type=DatasetInfoHook, tokenizer=tokenizer),
    # Answers to evaluation_inputs before, during and after training.
    dict(
        type=EvaluateChatHook,
        tokenizer=tokenizer,
        every_n_iters=evaluation_freq,
        evaluation_inputs=evaluation_inputs,
        system=SYSTEM,
        prompt_template=prompt_template),
    # loss_curve.png (loss and learning rate) in the work dir when training ends.
    dict(type=LossCurveHook),
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
    # nccl on GPUs; xft train uses gloo on a CPU-only machine.
    dist_cfg=dict(backend='nccl'),
)

# Logged scalars go to <work_dir>/<timestamp>/vis_data/scalars.json (read by
# `xft plot-log`), and to TensorBoard too when use_tensorboard is True.
visualizer = dict(
    type=Visualizer,
    vis_backends=[dict(type=LocalVisBackend)] +
    ([dict(type=TensorboardBackend)] if use_tensorboard else []))

log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
