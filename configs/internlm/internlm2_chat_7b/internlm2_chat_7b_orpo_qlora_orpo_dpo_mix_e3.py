# InternLM2-Chat-7B, ORPO with QLoRA (4-bit NF4 base + LoRA r=64; no reference model),
#, on orpo-dpo-mix-40k (mlabonne/orpo-dpo-mix-40k, 40k pairs), 3 epochs.
#
#   xft train internlm2_chat_7b_orpo_qlora_orpo_dpo_mix_e3
# on 8 GPUs of one machine:
#   NPROC_PER_NODE=8 xft train internlm2_chat_7b_orpo_qlora_orpo_dpo_mix_e3
# a copy to edit (PART 1), then train the copy:
#   xft copy-cfg internlm2_chat_7b_orpo_qlora_orpo_dpo_mix_e3 .
#
# Written by `python -m xft.tools.gen_configs`. PARTs 2-5 are the shared `orpo_qlora`
# body, identical in every zoo config of that kind (tests/test_configs_zoo.py checks it);
# what makes this config this one is PART 1.
import torch
from datasets import load_dataset
from mmengine.dataset import DefaultSampler
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,
                            LoggerHook, ParamSchedulerHook)
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from mmengine.runner import ValLoop
from mmengine.visualization import LocalVisBackend, Visualizer
from peft import LoraConfig
from torch.optim import AdamW
from transformers import (AutoModelForCausalLM, AutoTokenizer,
                          BitsAndBytesConfig)

from xft.dataset.collate_fns.preference_collate_fn import preference_collate_fn
from xft.dataset.map_fns import orpo_dpo_mix_40k_map_fn, template_map_fn_factory
from xft.dataset.preference_dataset import build_preference_dataset
from xft.engine.hooks import DatasetInfoHook, EvaluateChatHook
from xft.engine.hooks.plot_hook import LossCurveHook, TensorboardBackend
from xft.engine.preference_metric import PreferenceAccuracy
from xft.engine.runner import TrainLoop
from xft.model.orpo import ORPO
from xft.utils import PROMPT_TEMPLATE, SYSTEM_TEMPLATE

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
# InternLM2-Chat-7B from the Hugging Face hub, or the path of a local copy.
pretrained_model_name_or_path = 'internlm/internlm2-chat-7b'
# bf16 has fp32's range, so no loss scaling; torch.float16 on GPUs before Ampere (no bf16).
torch_dtype = torch.bfloat16
# None: LoRA on every linear layer but the output head (as the QLoRA paper).
lora_target_modules = None
# Dropout on the input of each LoRA adapter: a regulariser against overfitting small data
# (XTuner's 0.1; 0 turns it off). The fused fast path supports it.
lora_dropout = 0.1
# Weight of the odds-ratio term next to the chosen answers' NLL (ORPO's lambda; XTuner's 0.1).
loss_beta = 0.1

# Data
# Hub name, or a local file with the same fields.
data_path = 'mlabonne/orpo-dpo-mix-40k'
# Rows hold 'chosen' and 'rejected' chat-message lists that differ in the last (assistant) message.
dataset_map_fn = orpo_dpo_mix_40k_map_fn
# InternLM2's ChatML-style '<|im_start|>' format, as the chat model was trained.
prompt_template = PROMPT_TEMPLATE.internlm2_chat
# Tokens per sequence (the prompt and one answer); a longer one is cut at the end, and a pair whose
# answer is cut away entirely is dropped.
max_length = 2048
# Whole pairs packed into rows of max_packed_length tokens (XTuner's switch), so no compute goes
# to padding; the sequences of a row never attend to each other.
use_varlen_attn = True
# Room for the longest pair: two sequences of max_length.
max_packed_length = max_length * 2
# 400 pairs set aside, never trained on: the held-out reward accuracy is measured on them.
held_out = 400

# Scheduler & Optimizer
batch_size = 1  # packed rows per device per step
# 16 rows per optimizer step on one GPU; divide it by the GPU count to keep the
# same effective batch when you add GPUs.
accumulative_counts = 16
dataloader_num_workers = 0
# Passes over the data (as in XTuner's configs for this set).
max_epochs = 3
optim_type = AdamW
# ORPO also fine-tunes on the chosen answers: a LoRA rate between SFT's 2e-4 and XTuner's
# full-model 5e-6.
lr = 5e-5
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # gradient clipping
# 3% of the steps warm the rate up before the cosine decay.
warmup_ratio = 0.03

# Save
save_steps = 500
save_total_limit = 2  # keep the newest 2 checkpoints (-1 keeps all)

# Evaluate: held-out reward accuracy, and answers to evaluation_inputs, every so often
evaluation_freq = 500
# XTuner's DPO configs ask with the alpaca system prompt.
SYSTEM = SYSTEM_TEMPLATE.alpaca
evaluation_inputs = [
    'Please tell me five scenic spots in Shanghai',
    '890729 - 425663? Only respond with math and no words.',
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
    type=ORPO,
    use_varlen_attn=use_varlen_attn,
    beta=loss_beta,
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
    type=build_preference_dataset,
    dataset=dict(type=load_dataset, path=data_path),
    tokenizer=tokenizer,
    max_length=max_length,
    dataset_map_fn=dataset_map_fn,
    template_map_fn=dict(
        type=template_map_fn_factory, template=prompt_template),
    is_dpo=True,
    is_reward=False,
    reward_token_id=-1,
    use_varlen_attn=use_varlen_attn,
    max_packed_length=max_packed_length,
    shuffle_before_pack=True,
    held_out=held_out,
    subset='train')

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=train_dataset,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=preference_collate_fn, use_varlen_attn=use_varlen_attn))

# The held-out pairs (the same file, the rows set aside above), one pair per row.
val_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=dict(train_dataset, subset='held_out'),
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=preference_collate_fn, use_varlen_attn=use_varlen_attn))
val_evaluator = dict(type=PreferenceAccuracy)
val_cfg = dict(type=ValLoop)

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

# Epochs are turned into iterations; checkpoints and logs count iterations. The held-out
# accuracy is measured every evaluation_freq iterations and at the end.
train_cfg = dict(type=TrainLoop, max_epochs=max_epochs, val_interval=evaluation_freq)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
custom_hooks = [
    # One decoded pair (chosen, then rejected) before training starts.
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
    # iteration, loss, nll, reward accuracy, rewards, margin, learning rate, every 10 iterations
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
