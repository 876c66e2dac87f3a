"""Write the config zoo under ``configs/`` from one table: ``python -m xft.tools.gen_configs``.

Every zoo config is a whole file a user can read top to bottom and copy, but only its PART 1
(settings) is its own: PARTs 2-5 are one of four shared bodies (``qlora``, ``lora``, ``full``,
``pretrain``), so 100+ files cannot drift apart. ``tests/test_configs_zoo.py`` checks that the
committed files equal what this script writes, and that PARTs 2-5 are byte-identical per body.

To add a model, add a ``Model`` row to ``MODELS``; to add a dataset, a ``Dataset`` row to
``DATASETS`` and its name to the models that should get it. Then run the script (``--check``
only reports the files that differ).

Facts (hub ids, prompt templates, learning rates, lengths) follow XTuner 0.1.x's configs.
"""
import argparse
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from xft.engine.config import REPO_CONFIGS

# Methods: the learning rate each uses unless a model says otherwise, and the words the
# header uses for it. LoRA-style methods train ~1% of the weights, so they take a 10x higher rate.
METHOD_LR = {'qlora': '2e-4', 'lora': '2e-4', 'full': '2e-5'}
METHOD_WORDS = {
    'qlora': 'QLoRA (4-bit NF4 base + LoRA r=64)',
    'lora': 'LoRA r=64 on a 16-bit base',
    'full': 'full fine-tuning (every weight trained)',
}


@dataclass(frozen=True)
class Dataset:
    """One training set: where it lives, how a row becomes a conversation, what to ask the model."""
    key: str           # the name's dataset part: llama2_7b_chat_qlora_{key}_e3
    title: str         # for the header
    path: str          # hub name or placeholder path
    path_why: str
    map_fn: str        # name in xft.dataset.map_fns, or 'None' (rows are conversations already)
    map_fn_why: str
    epochs: int
    system: str        # the SYSTEM expression for the evaluation prompts
    system_why: str
    inputs: tuple = ('请给我介绍五个上海的景点', 'Please tell me five scenic spots in Shanghai')
    body: str = 'sft'  # 'sft' or 'pretrain'


DATASETS = {d.key: d for d in [
    Dataset('alpaca', 'Alpaca (tatsu-lab/alpaca, 52k English instructions)', 'tatsu-lab/alpaca',
            'Hub name, or a local .json/.jsonl file or folder in the same layout.',
            'alpaca_map_fn', "rows hold 'instruction', 'input' (may be empty) and 'output'.", 3,
            "''", 'alpaca rows carry no system prompt, so the samples are asked without one too.'),
    Dataset('alpaca_zh', 'Alpaca-GPT4 Chinese (silk-road/alpaca-data-gpt4-chinese)',
            'silk-road/alpaca-data-gpt4-chinese',
            'Hub name, or a local file with the same fields.',
            'alpaca_zh_map_fn',
            "rows hold 'instruction_zh', 'input_zh', 'output_zh' (or the plain alpaca names).", 3,
            "''", 'the rows carry no system prompt.'),
    Dataset('oasst1', 'openassistant-guanaco (timdettmers/openassistant-guanaco, ~10k dialogues)',
            'timdettmers/openassistant-guanaco',
            'Hub name, or a local .jsonl file of {"text": ...} rows.',
            'oasst1_map_fn', "'### Human: ...### Assistant: ...' text, one or more turns per row.", 3,
            "''", 'the dialogues carry no system prompt.'),
    Dataset('code_alpaca', 'CodeAlpaca-20k (HuggingFaceH4/CodeAlpaca_20K)',
            'HuggingFaceH4/CodeAlpaca_20K',
            'Hub name, or a local file with the same fields.',
            'code_alpaca_map_fn', "rows hold 'prompt' and 'completion' (or the alpaca names).", 3,
            'SYSTEM_TEMPLATE.coder', 'the map fn trains with the coder system prompt; ask with it too.',
            inputs=('写一个Python函数，将两个有序列表合并成一个有序列表',
                    'Write a Python function that checks whether a string is a palindrome.')),
    Dataset('custom_sft', 'your own data in OpenAI messages format', '/path/to/your/messages.jsonl',
            'Your file (.json array or .jsonl) or a folder of them: each row '
            '{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}; '
            'an assistant message with "loss": false is context only.',
            'openai_map_fn', 'OpenAI chat messages, single- or multi-turn.', 1,
            "''", 'put your system prompt here if your data uses one.'),
    Dataset('custom_conversation', "your own data in xft's conversation format",
            '/path/to/your/conversations.json',
            'Your file (.json array or .jsonl) or a folder of them: each row '
            '{"conversation": [{"system": ..., "input": ..., "output": ...}, ...]}; '
            'one turn for single-turn data, several for multi-turn.',
            'None', 'None: the rows already hold a conversation list; no mapping needed.', 1,
            "''", 'put your system prompt here if your data uses one.'),
    Dataset('custom_pretrain', 'your own plain text',
            '/path/to/your/corpus.txt',
            'Your .txt file (one document per line), a .jsonl/.json of {"text": ...} rows, '
            'or a folder of them.',
            'pretrain_map_fn', 'each text is one sample and all of it is trained.', 1,
            "''", 'pre-training has no system prompt.',
            inputs=('上海是', 'Shanghai is'), body='pretrain'),
]}


@dataclass(frozen=True)
class Model:
    """One model: its hub id, chat format and the datasets/methods it gets configs for."""
    family: str                 # folder under configs/
    key: str                    # the name's model part (XTuner's spelling)
    hub_id: str
    title: str
    template: str               # PROMPT_TEMPLATE name
    template_why: str
    max_length: int = 2048
    max_length_why: str = 'Tokens per training row; packing fills each row to this length.'
    # {method: [dataset keys]}
    zoo: dict = field(default_factory=dict)
    lora_target_modules: str = 'None'
    lora_target_why: str = 'None: LoRA on every linear layer but the output head (as the QLoRA paper).'


CHAT_SETS = ['alpaca', 'oasst1', 'custom_sft', 'custom_conversation']
ZH_SETS = CHAT_SETS + ['alpaca_zh']


def _zoo(qlora, lora=('alpaca',), full=('alpaca',)):
    return {'qlora': list(qlora), 'lora': list(lora), 'full': list(full)}


BASE_WHY = ('A base model has no chat format of its own; the plain default template teaches one.')

MODELS = [
    # InternLM
    Model('internlm', 'internlm_7b', 'internlm/internlm-7b', 'InternLM-7B (base)', 'default',
          BASE_WHY, zoo=_zoo(['alpaca', 'oasst1', 'alpaca_zh'], lora=[], full=['custom_pretrain'])),
    Model('internlm', 'internlm_chat_7b', 'internlm/internlm-chat-7b', 'InternLM-Chat-7B',
          'internlm_chat', "InternLM-Chat's own '<|User|>:...<eoh>' format, so it keeps its chat skills.",
          zoo=_zoo(ZH_SETS)),
    Model('internlm', 'internlm2_chat_1_8b', 'internlm/internlm2-chat-1_8b', 'InternLM2-Chat-1.8B',
          'internlm2_chat', "InternLM2's ChatML-style '<|im_start|>' format, as the chat model was trained.",
          zoo=_zoo(ZH_SETS, lora=['alpaca'], full=['alpaca'])),
    Model('internlm', 'internlm2_chat_7b', 'internlm/internlm2-chat-7b', 'InternLM2-Chat-7B',
          'internlm2_chat', "InternLM2's ChatML-style '<|im_start|>' format, as the chat model was trained.",
          zoo=_zoo(ZH_SETS)),
    Model('internlm', 'internlm2_5_chat_7b', 'internlm/internlm2_5-7b-chat', 'InternLM2.5-7B-Chat',
          'internlm2_chat', 'InternLM2.5 keeps the InternLM2 chat format.', zoo=_zoo(ZH_SETS)),
    # Llama
    Model('llama', 'llama2_7b', 'meta-llama/Llama-2-7b-hf', 'Llama-2-7B (base)', 'default', BASE_WHY,
          zoo=_zoo(['alpaca', 'oasst1', 'code_alpaca'], lora=[], full=['custom_pretrain'])),
    Model('llama', 'llama2_7b_chat', 'meta-llama/Llama-2-7b-chat-hf', 'Llama-2-7B-Chat', 'llama2_chat',
          "Llama-2-Chat's '[INST] ... [/INST]' format with its <<SYS>> system block.",
          zoo=_zoo(CHAT_SETS + ['code_alpaca'])),
    Model('llama', 'llama3_8b_instruct', 'meta-llama/Meta-Llama-3-8B-Instruct', 'Llama-3-8B-Instruct',
          'llama3_chat', "Llama 3's '<|start_header_id|>' header format, as the instruct model was trained.",
          zoo=_zoo(CHAT_SETS + ['code_alpaca'])),
    Model('llama', 'llama3_1_8b_instruct', 'meta-llama/Llama-3.1-8B-Instruct', 'Llama-3.1-8B-Instruct',
          'llama3_chat', 'Llama 3.1 keeps the Llama 3 header format.', zoo=_zoo(CHAT_SETS)),
    # Qwen
    Model('qwen', 'qwen1_5_0_5b_chat', 'Qwen/Qwen1.5-0.5B-Chat', 'Qwen1.5-0.5B-Chat', 'qwen_chat',
          "Qwen's ChatML format ('<|im_start|>user ...<|im_end|>').",
          zoo=_zoo(['alpaca', 'custom_sft'], lora=['alpaca'], full=['alpaca', 'custom_sft'])),
    Model('qwen', 'qwen1_5_7b_chat', 'Qwen/Qwen1.5-7B-Chat', 'Qwen1.5-7B-Chat', 'qwen_chat',
          "Qwen's ChatML format ('<|im_start|>user ...<|im_end|>').", zoo=_zoo(ZH_SETS, lora=['alpaca', 'oasst1'])),
    Model('qwen', 'qwen2_7b_instruct', 'Qwen/Qwen2-7B-Instruct', 'Qwen2-7B-Instruct', 'qwen_chat',
          'Qwen2 keeps the ChatML format of Qwen1.5.', zoo=_zoo(ZH_SETS)),
    Model('qwen', 'qwen2_5_0_5b_instruct', 'Qwen/Qwen2.5-0.5B-Instruct', 'Qwen2.5-0.5B-Instruct',
          'qwen_chat', 'Qwen2.5 keeps the ChatML format of Qwen1.5.',
          zoo=_zoo(['alpaca', 'custom_sft'], lora=['alpaca'], full=['alpaca', 'custom_sft'])),
    Model('qwen', 'qwen2_5_7b_instruct', 'Qwen/Qwen2.5-7B-Instruct', 'Qwen2.5-7B-Instruct', 'qwen_chat',
          'Qwen2.5 keeps the ChatML format of Qwen1.5.', zoo=_zoo(ZH_SETS + ['code_alpaca'])),
    # Mistral / Mixtral
    Model('mistral', 'mistral_7b', 'mistralai/Mistral-7B-v0.1', 'Mistral-7B-v0.1 (base)', 'mistral',
          "Mistral's '[INST] ... [/INST]' format, ready for its instruct-style use.",
          zoo=_zoo(['alpaca', 'oasst1', 'custom_sft'], lora=['alpaca'], full=['custom_pretrain'])),
    Model('mixtral', 'mixtral_8x7b_instruct', 'mistralai/Mixtral-8x7B-Instruct-v0.1',
          'Mixtral-8x7B-Instruct-v0.1 (mixture of experts)', 'mixtral',
          "Mixtral-Instruct's '[INST] ... [/INST]' format.",
          zoo=_zoo(['alpaca', 'oasst1', 'custom_sft'], lora=[], full=[]),
          lora_target_modules="['q_proj', 'k_proj', 'v_proj', 'o_proj']",
          lora_target_why=('Attention only. In transformers 5 the experts are fused 3-D weights, not '
                           'linear layers: neither LoRA nor 4-bit quantization reaches them, so they stay '
                           'bf16 (about 87 GiB for 8x7B) and this run needs a GPU of 100+ GB (H200).')),
    # Gemma
    Model('gemma', 'gemma_2b_it', 'google/gemma-2b-it', 'Gemma-2B-it', 'gemma',
          "Gemma's '<start_of_turn>user ... <end_of_turn>' format.", zoo=_zoo(CHAT_SETS)),
    Model('gemma', 'gemma_7b_it', 'google/gemma-7b-it', 'Gemma-7B-it', 'gemma',
          "Gemma's '<start_of_turn>user ... <end_of_turn>' format.",
          zoo=_zoo(['alpaca', 'oasst1', 'custom_sft'])),
    # Baichuan / ChatGLM
    Model('baichuan', 'baichuan2_7b_chat', 'baichuan-inc/Baichuan2-7B-Chat', 'Baichuan2-7B-Chat',
          'baichuan2_chat', "Baichuan2-Chat's '<reserved_106>...<reserved_107>' turn markers.",
          zoo=_zoo(ZH_SETS, lora=['alpaca_zh'], full=[])),
    Model('chatglm', 'chatglm3_6b', 'THUDM/chatglm3-6b', 'ChatGLM3-6B', 'chatglm3',
          "ChatGLM3's '<|user|> ... <|assistant|>' format.", zoo=_zoo(ZH_SETS, lora=['alpaca_zh'], full=[])),
    # DeepSeek
    Model('deepseek', 'deepseek_coder_6_7b_instruct', 'deepseek-ai/deepseek-coder-6.7b-instruct',
          'DeepSeek-Coder-6.7B-Instruct', 'deepseek_coder',
          "DeepSeek-Coder's '### Instruction: ... ### Response:' format with its own system text.",
          zoo=_zoo(['code_alpaca', 'custom_sft'], lora=['code_alpaca'], full=[])),
    Model('deepseek', 'deepseek_moe_16b_chat', 'deepseek-ai/deepseek-moe-16b-chat',
          'DeepSeek-MoE-16B-Chat (mixture of experts)', 'deepseek_moe',
          "DeepSeek-MoE-Chat's 'User: ... Assistant:' format.",
          zoo=_zoo(['alpaca', 'oasst1', 'custom_sft'], lora=[], full=[]),
          lora_target_modules="['q_proj', 'k_proj', 'v_proj', 'o_proj']",
          lora_target_why='Attention only: adapting all 64 experts of each layer costs far more memory.'),
    # Yi
    Model('yi', 'yi_6b', '01-ai/Yi-6B', 'Yi-6B (base)', 'default', BASE_WHY,
          zoo=_zoo(['alpaca', 'alpaca_zh', 'oasst1'], lora=[], full=['custom_pretrain'])),
    # Phi-3
    Model('phi', 'phi3_mini_4k_instruct', 'microsoft/Phi-3-mini-4k-instruct', 'Phi-3-mini-4k-instruct',
          'phi3_chat', "Phi-3's '<|user|> ... <|end|>' format.", max_length=4096,
          max_length_why='The model reads 4k tokens; packing fills each row to this length.',
          zoo=_zoo(CHAT_SETS)),
    # SmolLM2
    Model('smollm2', 'smollm2_135m_instruct', 'HuggingFaceTB/SmolLM2-135M-Instruct',
          'SmolLM2-135M-Instruct', 'chatml', "SmolLM2-Instruct's ChatML format, as in its chat_template.",
          zoo=_zoo(['alpaca', 'custom_sft'], lora=['alpaca', 'custom_conversation'],
                   full=['alpaca', 'custom_sft', 'custom_pretrain'])),
    Model('smollm2', 'smollm2_1_7b_instruct', 'HuggingFaceTB/SmolLM2-1.7B-Instruct',
          'SmolLM2-1.7B-Instruct', 'chatml', "SmolLM2-Instruct's ChatML format, as in its chat_template.",
          zoo=_zoo(['alpaca', 'oasst1', 'custom_sft'], lora=['alpaca'], full=['alpaca'])),
]


@dataclass(frozen=True)
class Entry:
    """One zoo config: a model, a method and a dataset."""
    model: Model
    method: str
    dataset: Dataset

    @property
    def name(self) -> str:
        return f'{self.model.key}_{self.method}_{self.dataset.key}_e{self.dataset.epochs}'

    @property
    def body(self) -> str:
        """Which shared PARTs 2-5 this config carries."""
        return 'pretrain' if self.dataset.body == 'pretrain' else self.method

    @property
    def path(self) -> Path:
        return Path(self.model.family) / self.model.key / f'{self.name}.py'


def zoo_entries() -> list:
    entries = []
    for model in MODELS:
        for method, keys in model.zoo.items():
            for key in keys:
                entries.append(Entry(model, method, DATASETS[key]))
    return entries


# --------------------------------------------------------------------------------------
# The text of a config
# --------------------------------------------------------------------------------------
BANNER = '#' * 71


def banner(title: str) -> str:
    return f'{BANNER}\n#{title:^69s}#\n{BANNER}\n'


def header(entry: Entry) -> str:
    model, dataset = entry.model, entry.dataset
    what = ('incremental pre-training (full fine-tuning on plain text)' if entry.body == 'pretrain'
            else METHOD_WORDS[entry.method])
    return (f'# {model.title}, {what},\n'
            f'# on {dataset.title}, {dataset.epochs} epoch{"s" if dataset.epochs > 1 else ""}.\n'
            '#\n'
            f'#   xft train {entry.name}\n'
            '# on 8 GPUs of one machine:\n'
            f'#   NPROC_PER_NODE=8 xft train {entry.name}\n'
            '# a copy to edit (PART 1), then train the copy:\n'
            f'#   xft copy-cfg {entry.name} .\n'
            '#\n'
            f'# Written by `python -m xft.tools.gen_configs`. PARTs 2-5 are the shared `{entry.body}`\n'
            '# body, identical in every zoo config of that kind (tests/test_configs_zoo.py checks it);\n'
            '# what makes this config this one is PART 1.\n')


def imports(entry: Entry) -> str:
    dataset, body = entry.dataset, entry.body
    map_names = [] if dataset.map_fn == 'None' else [dataset.map_fn]
    if body != 'pretrain':
        map_names.append('template_map_fn_factory')
    lines = ['from datasets import load_dataset',
             'from mmengine.dataset import DefaultSampler',
             'from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,',
             '                            LoggerHook, ParamSchedulerHook)',
             'from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR',
             'from mmengine.visualization import LocalVisBackend, Visualizer']
    if body in ('qlora', 'lora'):
        lines.append('from peft import LoraConfig')
    lines.append('from torch.optim import AdamW')
    if body == 'qlora':
        lines += ['from transformers import (AutoModelForCausalLM, AutoTokenizer,',
                  '                          BitsAndBytesConfig)']
    else:
        lines.append('from transformers import AutoModelForCausalLM, AutoTokenizer')
    lines += ['',
              'from xft.dataset import process_hf_dataset',
              'from xft.dataset.collate_fns import default_collate_fn']
    if map_names:
        lines.append(f'from xft.dataset.map_fns import {", ".join(map_names)}')
    lines += ['from xft.engine.hooks import DatasetInfoHook, EvaluateChatHook',
              'from xft.engine.hooks.plot_hook import LossCurveHook, TensorboardBackend',
              'from xft.engine.runner import TrainLoop',
              'from xft.model import SupervisedFinetune']
    utils = ['PROMPT_TEMPLATE'] + (['SYSTEM_TEMPLATE'] if 'SYSTEM_TEMPLATE' in dataset.system else [])
    lines.append(f'from xft.utils import {", ".join(utils)}')
    return '\n'.join(lines) + '\n'


def _comment(text: str) -> str:
    """A why-comment, wrapped to the 99-column line limit."""
    return textwrap.fill(text, 99, initial_indent='# ', subsequent_indent='# ')


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def _string_list(items) -> str:
    return '[\n' + ''.join(f'    {item!r},\n' for item in items) + ']'


def part1(entry: Entry) -> str:
    model, dataset, method = entry.model, entry.dataset, entry.method
    lr = METHOD_LR[method]
    lr_why = {'qlora': 'The QLoRA paper\'s rate for 7B-class models at r=64.',
              'lora': 'The usual LoRA rate at r=64; the adapters start at zero, so it can be high.',
              'full': 'Full fine-tuning moves every weight: 10x lower than LoRA to keep what the '
                      'model knows.'}[method]
    if entry.body == 'pretrain':
        template = "dict(INSTRUCTION='{input}')"
        template_why = ('Pre-training data gets no template; the samples during training are '
                        'plain text for the model to continue.')
    else:
        template = f'PROMPT_TEMPLATE.{model.template}'
        template_why = model.template_why
    lines = [banner('PART 1  Settings').rstrip('\n'),
             '# Model',
             _comment(f'{model.title} from the Hugging Face hub, or the path of a local copy.'),
             f"pretrained_model_name_or_path = '{model.hub_id}'",
             '# bf16 has fp32\'s range, so no loss scaling; torch.float16 on GPUs before Ampere.',
             "torch_dtype = 'torch.bfloat16'"]
    if method in ('qlora', 'lora'):
        lines += [_comment(model.lora_target_why), f'lora_target_modules = {model.lora_target_modules}']
    lines += ['',
              '# Data',
              _comment(dataset.path_why),
              f"data_path = '{dataset.path}'",
              _comment(_sentence(dataset.map_fn_why)),
              f'dataset_map_fn = {dataset.map_fn}',
              _comment(template_why),
              f'prompt_template = {template}',
              _comment(model.max_length_why),
              f'max_length = {model.max_length}',
              '# Pack several samples into each row so no compute goes to padding; packed samples',
              '# never attend to each other.',
              'pack_to_max_length = True',
              '',
              '# Scheduler & Optimizer',
              'batch_size = 1  # rows per device per step',
              '# 16 rows per optimizer step on one GPU; divide it by the GPU count to keep the',
              '# same effective batch when you add GPUs.',
              'accumulative_counts = 16',
              'dataloader_num_workers = 0',
              '# Passes over the data' + (" (as in XTuner's configs for this set)."
                                          if not dataset.key.startswith('custom') else
                                          '; one is usually enough for a custom set, more if it is small.'),
              f'max_epochs = {dataset.epochs}',
              'optim_type = AdamW',
              _comment(lr_why),
              f'lr = {lr}',
              'betas = (0.9, 0.999)',
              'weight_decay = 0',
              'max_norm = 1  # gradient clipping',
              '# 3% of the steps warm the rate up before the cosine decay.',
              'warmup_ratio = 0.03',
              '',
              '# Save',
              'save_steps = 500',
              'save_total_limit = 2  # keep the newest 2 checkpoints (-1 keeps all)',
              '',
              '# Evaluate the generation performance during training',
              'evaluation_freq = 500',
              _comment(_sentence(dataset.system_why)),
              f'SYSTEM = {dataset.system}',
              f'evaluation_inputs = {_string_list(dataset.inputs)}',
              '',
              '# Logging',
              '# True: also write TensorBoard event files (`pip install tensorboard`; then',
              '# `tensorboard --logdir work_dirs`). Scalars always go to vis_data/scalars.json.',
              'use_tensorboard = False',
              '']
    return '\n'.join(lines) + '\n'


_QUANTIZATION = """\
        quantization_config=dict(
            type=BitsAndBytesConfig,
            load_in_4bit=True,
            load_in_8bit=False,
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type='nf4')),
"""

_LORA = """\
    lora=dict(
        type=LoraConfig,
        r=64,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=lora_target_modules,
        bias='none',
        task_type='CAUSAL_LM'))
"""


def part2(body: str) -> str:
    llm_end = {'qlora': ',\n' + _QUANTIZATION, 'lora': '),\n', 'full': '))\n', 'pretrain': '))\n'}[body]
    text = (banner('PART 2  Model & Tokenizer') +
            'tokenizer = dict(\n'
            '    type=AutoTokenizer.from_pretrained,\n'
            '    pretrained_model_name_or_path=pretrained_model_name_or_path,\n'
            '    trust_remote_code=True,\n'
            "    padding_side='right')\n"
            '\n'
            'model = dict(\n'
            '    type=SupervisedFinetune,\n'
            '    llm=dict(\n'
            '        type=AutoModelForCausalLM.from_pretrained,\n'
            '        pretrained_model_name_or_path=pretrained_model_name_or_path,\n'
            '        trust_remote_code=True,\n'
            '        torch_dtype=torch_dtype' + llm_end)
    if body in ('qlora', 'lora'):
        text += _LORA
    return text + '\n'


def part3(body: str) -> str:
    if body == 'pretrain':
        template_line = '    template_map_fn=None,\n'
        shuffle = 'False'
    else:
        template_line = ('    template_map_fn=dict(\n'
                         '        type=template_map_fn_factory, template=prompt_template),\n')
        shuffle = 'True'
    return (banner('PART 3  Dataset & Dataloader') +
            'train_dataset = dict(\n'
            '    type=process_hf_dataset,\n'
            '    dataset=dict(type=load_dataset, path=data_path),\n'
            '    tokenizer=tokenizer,\n'
            '    max_length=max_length,\n'
            '    dataset_map_fn=dataset_map_fn,\n'
            + template_line +
            '    remove_unused_columns=True,\n'
            f'    shuffle_before_pack={shuffle},\n'
            '    pack_to_max_length=pack_to_max_length)\n'
            '\n'
            'train_dataloader = dict(\n'
            '    batch_size=batch_size,\n'
            '    num_workers=dataloader_num_workers,\n'
            '    dataset=train_dataset,\n'
            '    sampler=dict(type=DefaultSampler, shuffle=True),\n'
            '    collate_fn=dict(type=default_collate_fn))\n'
            '\n')


def part4() -> str:
    return (banner('PART 4  Scheduler & Optimizer') +
            '# Mixed precision in the model\'s dtype on GPUs; without CUDA, xft train swaps in the\n'
            '# plain OptimWrapper.\n'
            'optim_wrapper = dict(\n'
            '    type=AmpOptimWrapper,\n'
            '    optimizer=dict(\n'
            '        type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),\n'
            '    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),\n'
            '    accumulative_counts=accumulative_counts,\n'
            "    loss_scale='dynamic',\n"
            "    dtype=torch_dtype.replace('torch.', ''))\n"
            '\n'
            '# Linear warm-up, then cosine decay to zero; both counted in iterations.\n'
            'param_scheduler = [\n'
            '    dict(\n'
            '        type=LinearLR,\n'
            '        start_factor=1e-5,\n'
            '        by_epoch=True,\n'
            '        begin=0,\n'
            '        end=warmup_ratio * max_epochs,\n'
            '        convert_to_iter_based=True),\n'
            '    dict(\n'
            '        type=CosineAnnealingLR,\n'
            '        eta_min=0.0,\n'
            '        by_epoch=True,\n'
            '        begin=warmup_ratio * max_epochs,\n'
            '        end=max_epochs,\n'
            '        convert_to_iter_based=True)\n'
            ']\n'
            '\n'
            '# Epochs are turned into iterations; checkpoints and logs count iterations.\n'
            'train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)\n'
            '\n')


def part5() -> str:
    return (banner('PART 5  Runtime') +
            'custom_hooks = [\n'
            '    # Token counts and one decoded sample before training starts.\n'
            '    dict(type=DatasetInfoHook, tokenizer=tokenizer),\n'
            '    # Answers to evaluation_inputs before, during and after training.\n'
            '    dict(\n'
            '        type=EvaluateChatHook,\n'
            '        tokenizer=tokenizer,\n'
            '        every_n_iters=evaluation_freq,\n'
            '        evaluation_inputs=evaluation_inputs,\n'
            '        system=SYSTEM,\n'
            '        prompt_template=prompt_template),\n'
            '    # loss_curve.png (loss and learning rate) in the work dir when training ends.\n'
            '    dict(type=LossCurveHook),\n'
            ']\n'
            '\n'
            'default_hooks = dict(\n'
            '    timer=dict(type=IterTimerHook),\n'
            '    # iteration, loss, learning rate and time left, every 10 iterations\n'
            '    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),\n'
            '    param_scheduler=dict(type=ParamSchedulerHook),\n'
            '    checkpoint=dict(\n'
            '        type=CheckpointHook,\n'
            '        by_epoch=False,\n'
            '        interval=save_steps,\n'
            '        max_keep_ckpts=save_total_limit),\n'
            '    sampler_seed=dict(type=DistSamplerSeedHook),\n'
            ')\n'
            '\n'
            'env_cfg = dict(\n'
            '    cudnn_benchmark=False,\n'
            "    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),\n"
            '    # nccl on GPUs; xft train uses gloo on a CPU-only machine.\n'
            "    dist_cfg=dict(backend='nccl'),\n"
            ')\n'
            '\n'
            '# Logged scalars go to <work_dir>/<timestamp>/vis_data/scalars.json (read by\n'
            '# `xft plot-log`), and to TensorBoard too when use_tensorboard is True.\n'
            'visualizer = dict(\n'
            '    type=Visualizer,\n'
            '    vis_backends=[dict(type=LocalVisBackend)] +\n'
            '    ([dict(type=TensorboardBackend)] if use_tensorboard else []))\n'
            '\n'
            "log_level = 'INFO'\n"
            'load_from = None\n'
            'resume = False\n'
            'randomness = dict(seed=None, deterministic=False)\n'
            'log_processor = dict(by_epoch=False)\n')


def body_text(body: str) -> str:
    """PARTs 2-5 of one shared body."""
    return part2(body) + part3(body) + part4() + part5()


def render(entry: Entry) -> str:
    return header(entry) + imports(entry) + '\n' + part1(entry) + body_text(entry.body)


def split_body(text: str) -> tuple:
    """(header + imports + PART 1, PARTs 2-5) of a config's text."""
    marker = banner('PART 2  Model & Tokenizer')
    head, found, rest = text.partition(marker)
    if not found:
        raise ValueError('no PART 2 banner')
    return head, marker + rest


def rendered_zoo() -> dict:
    """{path relative to configs/: text} for every zoo config."""
    return {entry.path: render(entry) for entry in zoo_entries()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m xft.tools.gen_configs',
                                     description='Write the config zoo from its table.')
    parser.add_argument('--out', default=str(REPO_CONFIGS), help='the configs folder')
    parser.add_argument('--check', action='store_true', help='only list the files that differ')
    args = parser.parse_args(argv)
    out = Path(args.out)
    differ = []
    for rel, text in rendered_zoo().items():
        path = out / rel
        if not path.is_file() or path.read_text() != text:
            differ.append(rel)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    verb = 'differ' if args.check else 'written'
    print(f'{len(differ)} of {len(rendered_zoo())} configs {verb}')
    for rel in differ:
        print(f'  {rel}')
    return 1 if args.check and differ else 0


if __name__ == '__main__':
    sys.exit(main())
