"""Write the config zoo under ``configs/`` from one table: ``python -m xft.tools.gen_configs``.

Every zoo config is a whole file a user can read top to bottom and copy, but only its header,
imports and PART 1 (settings) are its own: the file is one of the templates in
``config_templates/`` (``qlora``, ``lora``, ``full``, ``pretrain`` for SFT; ``dpo_qlora``,
``orpo_qlora``, ``reward_qlora`` for preference training) with the ``{{ name }}``
placeholders above PART 2 filled from a ``Model`` and a ``Dataset`` record below. PARTs 2-5 are
copied from the template verbatim, so 100+ files cannot drift apart.
``tests/test_configs_zoo.py`` checks that the committed files equal what this script writes, and
that PARTs 2-5 equal their template's in every file.

To add a model, add a ``Model`` record to ``MODELS``; to add a dataset, a ``Dataset`` record to
``DATASETS`` and its key to the models that should get it (preference configs:
``PREFERENCE_ZOO``). Then run the script (``--check`` only reports the files that differ). Facts (hub ids, prompt templates, learning rates,
lengths) follow XTuner 0.1.x's configs.
"""
import argparse
import re
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Tuple

from xft.dataset import map_fns
from xft.engine.config import REPO_CONFIGS
from xft.utils import PROMPT_TEMPLATE, SYSTEM_TEMPLATE

TEMPLATES = Path(__file__).with_name('config_templates')
METHODS = ('qlora', 'lora', 'full')
# Preference training: DPO, ORPO and a reward model, each on QLoRA (``PREFERENCE_ZOO``).
PREFERENCE_METHODS = ('dpo_qlora', 'orpo_qlora', 'reward_qlora')
# A why-comment longer than this is wrapped (the project's line limit).
LINE_LIMIT = 99

XTUNER_EPOCHS_WHY = "Passes over the data (as in XTuner's configs for this set)."
CUSTOM_EPOCHS_WHY = 'Passes over the data; one is usually enough for a custom set, more if it is small.'
NO_SYSTEM_WHY = 'The rows carry no system prompt.'
SAMPLE_QUESTIONS = ('请给我介绍五个上海的景点', 'Please tell me five scenic spots in Shanghai')
PREFERENCE_MAX_LENGTH_WHY = ('Tokens per sequence (the prompt and one answer); a longer one is cut '
                             'at the end, and a pair whose answer is cut away entirely is dropped.')


def system_source(system: str) -> str:
    """The SYSTEM line's source: the SYSTEM_TEMPLATE entry it is, or the string itself."""
    names = [name for name, text in SYSTEM_TEMPLATE.items() if system and text == system]
    if len(names) > 1:
        raise ValueError(f'system prompt matches several SYSTEM_TEMPLATE entries: {names}')
    return f'SYSTEM_TEMPLATE.{names[0]}' if names else repr(system)


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """One training set: where it lives, how a row becomes a conversation, what to ask the model.

    Each ``*_why`` is the comment written above that PART 1 setting.
    """
    key: str                    # the name's dataset part: llama2_7b_chat_qlora_{key}_e3
    title: str                  # for the header
    path: str                   # hub name or placeholder path
    path_why: str
    map_fn: Optional[Callable]  # a function of xft.dataset.map_fns; None: rows are conversations
    map_fn_why: str
    epochs: int
    epochs_why: str = XTUNER_EPOCHS_WHY
    system: str = ''            # the system prompt of the evaluation questions
    system_why: str = NO_SYSTEM_WHY
    inputs: Tuple[str, ...] = SAMPLE_QUESTIONS
    pretrain: bool = False      # plain text: the `pretrain` body, no prompt template
    preference: bool = False    # pairs (prompt, chosen, rejected): the preference bodies only
    held_out: float = 0         # preference: pairs set aside for the held-out accuracy
    held_out_why: str = ''

    def __post_init__(self):
        if self.map_fn is not None and getattr(map_fns, self.map_fn.__name__, None) is not self.map_fn:
            raise ValueError(f'dataset {self.key}: map_fn must be importable from xft.dataset.map_fns')
        if self.pretrain and self.map_fn is None:
            raise ValueError(f'dataset {self.key}: pre-training text needs a map_fn (pretrain_map_fn)')
        system_source(self.system)  # one SYSTEM_TEMPLATE entry at most
        if self.preference and not self.held_out:
            raise ValueError(f'dataset {self.key}: preference configs evaluate on held-out pairs; '
                             'set held_out')


@dataclass(frozen=True, kw_only=True)
class Model:
    """One model: its hub id, chat format and the datasets/methods it gets configs for."""
    family: str                 # folder under configs/
    key: str                    # the name's model part (XTuner's spelling)
    hub_id: str
    title: str
    template: str               # a PROMPT_TEMPLATE name
    template_why: str
    zoo: dict                   # {method: dataset keys}, see `methods`
    max_length: int = 2048
    max_length_why: str = 'Tokens per training row; packing fills each row to this length.'
    lora_target_modules: Optional[Tuple[str, ...]] = None
    lora_target_modules_why: str = ('None: LoRA on every linear layer but the output head '
                                    '(as the QLoRA paper).')
    reward_token_id: int = -1   # reward models: the token whose hidden state is scored
    reward_token_id_why: str = ("-1: each answer's score is read at its end-of-turn token "
                                '(the template\'s SUFFIX); a token id: that token is appended and '
                                'read instead.')

    def __post_init__(self):
        if self.template not in PROMPT_TEMPLATE:
            raise ValueError(f'model {self.key}: no PROMPT_TEMPLATE named {self.template!r}')
        unknown = set(self.zoo) - set(METHODS)
        if unknown:
            raise ValueError(f'model {self.key}: unknown methods {sorted(unknown)}; expected {METHODS}')


def methods(*, qlora, lora=('alpaca',), full=('alpaca',)) -> dict:
    """A model's zoo: the dataset keys it gets a config for, per method (XTuner's usual spread:
    QLoRA on several sets, LoRA and full fine-tuning on alpaca)."""
    return {'qlora': tuple(qlora), 'lora': tuple(lora), 'full': tuple(full)}


DATASETS = {d.key: d for d in [
    Dataset(key='alpaca', title='Alpaca (tatsu-lab/alpaca, 52k English instructions)',
            path='tatsu-lab/alpaca',
            path_why='Hub name, or a local .json/.jsonl file or folder in the same layout.',
            map_fn=map_fns.alpaca_map_fn,
            map_fn_why="Rows hold 'instruction', 'input' (may be empty) and 'output'.",
            epochs=3,
            system_why='Alpaca rows carry no system prompt, so the samples are asked without one too.'),
    Dataset(key='alpaca_zh', title='Alpaca-GPT4 Chinese (silk-road/alpaca-data-gpt4-chinese)',
            path='silk-road/alpaca-data-gpt4-chinese',
            path_why='Hub name, or a local file with the same fields.',
            map_fn=map_fns.alpaca_zh_map_fn,
            map_fn_why="Rows hold 'instruction_zh', 'input_zh', 'output_zh' (or the plain alpaca names).",
            epochs=3),
    Dataset(key='oasst1', title='openassistant-guanaco (timdettmers/openassistant-guanaco, ~10k dialogues)',
            path='timdettmers/openassistant-guanaco',
            path_why='Hub name, or a local .jsonl file of {"text": ...} rows.',
            map_fn=map_fns.oasst1_map_fn,
            map_fn_why="'### Human: ...### Assistant: ...' text, one or more turns per row.",
            epochs=3,
            system_why='The dialogues carry no system prompt.'),
    Dataset(key='code_alpaca', title='CodeAlpaca-20k (HuggingFaceH4/CodeAlpaca_20K)',
            path='HuggingFaceH4/CodeAlpaca_20K',
            path_why='Hub name, or a local file with the same fields.',
            map_fn=map_fns.code_alpaca_map_fn,
            map_fn_why="Rows hold 'prompt' and 'completion' (or the alpaca names).",
            epochs=3,
            system=SYSTEM_TEMPLATE.coder,
            system_why='The map fn trains with the coder system prompt; ask with it too.',
            inputs=('写一个Python函数，将两个有序列表合并成一个有序列表',
                    'Write a Python function that checks whether a string is a palindrome.')),
    Dataset(key='custom_sft', title='your own data in OpenAI messages format',
            path='/path/to/your/messages.jsonl',
            path_why=('Your file (.json array or .jsonl) or a folder of them: each row '
                      '{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}; '
                      'an assistant message with "loss": false is context only.'),
            map_fn=map_fns.openai_map_fn,
            map_fn_why='OpenAI chat messages, single- or multi-turn.',
            epochs=1, epochs_why=CUSTOM_EPOCHS_WHY,
            system_why='Put your system prompt here if your data uses one.'),
    Dataset(key='custom_conversation', title="your own data in xft's conversation format",
            path='/path/to/your/conversations.json',
            path_why=('Your file (.json array or .jsonl) or a folder of them: each row '
                      '{"conversation": [{"system": ..., "input": ..., "output": ...}, ...]}; '
                      'one turn for single-turn data, several for multi-turn.'),
            map_fn=None,
            map_fn_why='None: the rows already hold a conversation list; no mapping needed.',
            epochs=1, epochs_why=CUSTOM_EPOCHS_WHY,
            system_why='Put your system prompt here if your data uses one.'),
    Dataset(key='custom_pretrain', title='your own plain text',
            path='/path/to/your/corpus.txt',
            path_why=('Your .txt file (one document per line), a .jsonl/.json of {"text": ...} rows, '
                      'or a folder of them.'),
            map_fn=map_fns.pretrain_map_fn,
            map_fn_why='Each text is one sample and all of it is trained.',
            epochs=1, epochs_why=CUSTOM_EPOCHS_WHY,
            system_why='Pre-training has no system prompt.',
            inputs=('上海是', 'Shanghai is'), pretrain=True),
    # Preference pairs.
    Dataset(key='orpo_dpo_mix', title='orpo-dpo-mix-40k (mlabonne/orpo-dpo-mix-40k, 40k pairs)',
            path='mlabonne/orpo-dpo-mix-40k',
            path_why='Hub name, or a local file with the same fields.',
            map_fn=map_fns.orpo_dpo_mix_40k_map_fn,
            map_fn_why=("Rows hold 'chosen' and 'rejected' chat-message lists that differ in the "
                        'last (assistant) message.'),
            epochs=3, preference=True, held_out=400,
            held_out_why=('400 pairs set aside, never trained on: the held-out reward accuracy '
                          'is measured on them.'),
            system=SYSTEM_TEMPLATE.alpaca, system_why="XTuner's DPO configs ask with the alpaca system prompt.",
            inputs=('Please tell me five scenic spots in Shanghai',
                    '890729 - 425663? Only respond with math and no words.')),
    Dataset(key='ultrafeedback',
            title='UltraFeedback pairs (argilla/ultrafeedback-binarized-preferences-cleaned, 60k)',
            path='argilla/ultrafeedback-binarized-preferences-cleaned',
            path_why='Hub name, or a local file with the same fields.',
            map_fn=map_fns.orpo_dpo_mix_40k_map_fn,
            map_fn_why=("Rows hold 'chosen' and 'rejected' chat-message lists that differ in the "
                        'last (assistant) message.'),
            epochs=1, epochs_why='One pass: a reward model overfits beyond it (XTuner).',
            preference=True, held_out=400,
            held_out_why=('400 pairs set aside, never trained on: the held-out accuracy is '
                          'measured on them.')),
    Dataset(key='custom_preference', title='your own preference pairs (ShareGPT layout)',
            path='/path/to/your/pairs.json',
            path_why=('Your file (.json array or .jsonl) or a folder of them: each row '
                      '{"conversations": [{"from": "human", "value": ...}, ...], "chosen": '
                      '{"from": "gpt", "value": ...}, "rejected": {"from": "gpt", "value": ...}}.'),
            map_fn=map_fns.sharegpt_preference_map_fn,
            map_fn_why=('ShareGPT pairs (LLaMA-Factory\'s layout): a conversation ending with a '
                        'human turn, and the chosen and rejected replies to it.'),
            epochs=1, epochs_why=CUSTOM_EPOCHS_WHY, preference=True, held_out=0.1,
            held_out_why=('A tenth of the pairs set aside, never trained on: the held-out accuracy '
                          'is measured on them.'),
            system_why='Put your system prompt here if your data uses one.'),
]}

CHAT_SETS = ('alpaca', 'oasst1', 'custom_sft', 'custom_conversation')
ZH_SETS = CHAT_SETS + ('alpaca_zh',)
BASE_WHY = 'A base model has no chat format of its own; the plain default template teaches one.'
CHATML_WHY = "Qwen's ChatML format ('<|im_start|>user ...<|im_end|>')."
GEMMA_WHY = "Gemma's '<start_of_turn>user ... <end_of_turn>' format."
INTERNLM2_WHY = "InternLM2's ChatML-style '<|im_start|>' format, as the chat model was trained."
SMOLLM2_WHY = "SmolLM2-Instruct's ChatML format, as in its chat_template."
ATTENTION_ONLY = ('q_proj', 'k_proj', 'v_proj', 'o_proj')

MODELS = [
    # InternLM
    Model(family='internlm', key='internlm_7b', hub_id='internlm/internlm-7b',
          title='InternLM-7B (base)', template='default', template_why=BASE_WHY,
          zoo=methods(qlora=['alpaca', 'oasst1', 'alpaca_zh'], lora=[], full=['custom_pretrain'])),
    Model(family='internlm', key='internlm_chat_7b', hub_id='internlm/internlm-chat-7b',
          title='InternLM-Chat-7B', template='internlm_chat',
          template_why="InternLM-Chat's own '<|User|>:...<eoh>' format, so it keeps its chat skills.",
          zoo=methods(qlora=ZH_SETS)),
    Model(family='internlm', key='internlm2_chat_1_8b', hub_id='internlm/internlm2-chat-1_8b',
          title='InternLM2-Chat-1.8B', template='internlm2_chat', template_why=INTERNLM2_WHY,
          zoo=methods(qlora=ZH_SETS)),
    Model(family='internlm', key='internlm2_chat_7b', hub_id='internlm/internlm2-chat-7b',
          title='InternLM2-Chat-7B', template='internlm2_chat', template_why=INTERNLM2_WHY,
          zoo=methods(qlora=ZH_SETS), reward_token_id=92527,
          reward_token_id_why="[UNUSED_TOKEN_130], appended to each sequence and scored (XTuner's)."),
    Model(family='internlm', key='internlm2_5_chat_7b', hub_id='internlm/internlm2_5-7b-chat',
          title='InternLM2.5-7B-Chat', template='internlm2_chat',
          template_why='InternLM2.5 keeps the InternLM2 chat format.', zoo=methods(qlora=ZH_SETS)),
    # Llama
    Model(family='llama', key='llama2_7b', hub_id='meta-llama/Llama-2-7b-hf',
          title='Llama-2-7B (base)', template='default', template_why=BASE_WHY,
          zoo=methods(qlora=['alpaca', 'oasst1', 'code_alpaca'], lora=[], full=['custom_pretrain'])),
    Model(family='llama', key='llama2_7b_chat', hub_id='meta-llama/Llama-2-7b-chat-hf',
          title='Llama-2-7B-Chat', template='llama2_chat',
          template_why="Llama-2-Chat's '[INST] ... [/INST]' format with its <<SYS>> system block.",
          zoo=methods(qlora=CHAT_SETS + ('code_alpaca',))),
    Model(family='llama', key='llama3_8b_instruct', hub_id='meta-llama/Meta-Llama-3-8B-Instruct',
          title='Llama-3-8B-Instruct', template='llama3_chat',
          template_why="Llama 3's '<|start_header_id|>' header format, as the instruct model was trained.",
          zoo=methods(qlora=CHAT_SETS + ('code_alpaca',)), reward_token_id=128002,
          reward_token_id_why="<|reserved_special_token_0|>, appended to each sequence and scored (XTuner's)."),
    Model(family='llama', key='llama3_1_8b_instruct', hub_id='meta-llama/Llama-3.1-8B-Instruct',
          title='Llama-3.1-8B-Instruct', template='llama3_chat',
          template_why='Llama 3.1 keeps the Llama 3 header format.', zoo=methods(qlora=CHAT_SETS)),
    # Qwen
    Model(family='qwen', key='qwen1_5_0_5b_chat', hub_id='Qwen/Qwen1.5-0.5B-Chat',
          title='Qwen1.5-0.5B-Chat', template='qwen_chat', template_why=CHATML_WHY,
          zoo=methods(qlora=['alpaca', 'custom_sft'], full=['alpaca', 'custom_sft'])),
    Model(family='qwen', key='qwen1_5_7b_chat', hub_id='Qwen/Qwen1.5-7B-Chat',
          title='Qwen1.5-7B-Chat', template='qwen_chat', template_why=CHATML_WHY,
          zoo=methods(qlora=ZH_SETS, lora=['alpaca', 'oasst1'])),
    Model(family='qwen', key='qwen2_7b_instruct', hub_id='Qwen/Qwen2-7B-Instruct',
          title='Qwen2-7B-Instruct', template='qwen_chat',
          template_why='Qwen2 keeps the ChatML format of Qwen1.5.', zoo=methods(qlora=ZH_SETS)),
    Model(family='qwen', key='qwen2_5_0_5b_instruct', hub_id='Qwen/Qwen2.5-0.5B-Instruct',
          title='Qwen2.5-0.5B-Instruct', template='qwen_chat',
          template_why='Qwen2.5 keeps the ChatML format of Qwen1.5.',
          zoo=methods(qlora=['alpaca', 'custom_sft'], full=['alpaca', 'custom_sft'])),
    Model(family='qwen', key='qwen2_5_7b_instruct', hub_id='Qwen/Qwen2.5-7B-Instruct',
          title='Qwen2.5-7B-Instruct', template='qwen_chat',
          template_why='Qwen2.5 keeps the ChatML format of Qwen1.5.',
          zoo=methods(qlora=ZH_SETS + ('code_alpaca',))),
    # Mistral / Mixtral
    Model(family='mistral', key='mistral_7b', hub_id='mistralai/Mistral-7B-v0.1',
          title='Mistral-7B-v0.1 (base)', template='mistral',
          template_why="Mistral's '[INST] ... [/INST]' format, ready for its instruct-style use.",
          zoo=methods(qlora=['alpaca', 'oasst1', 'custom_sft'], full=['custom_pretrain'])),
    Model(family='mixtral', key='mixtral_8x7b_instruct', hub_id='mistralai/Mixtral-8x7B-Instruct-v0.1',
          title='Mixtral-8x7B-Instruct-v0.1 (mixture of experts)', template='mixtral',
          template_why="Mixtral-Instruct's '[INST] ... [/INST]' format.",
          zoo=methods(qlora=['alpaca', 'oasst1', 'custom_sft'], lora=[], full=[]),
          lora_target_modules=ATTENTION_ONLY,
          lora_target_modules_why=(
              'Attention only. In transformers 5 the experts are fused 3-D weights, not linear layers: '
              'neither LoRA nor 4-bit quantization reaches them, so they stay bf16 (about 87 GiB for '
              '8x7B) and this run needs a GPU of 100+ GB (H200).')),
    # Gemma
    Model(family='gemma', key='gemma_2b_it', hub_id='google/gemma-2b-it',
          title='Gemma-2B-it', template='gemma', template_why=GEMMA_WHY, zoo=methods(qlora=CHAT_SETS)),
    Model(family='gemma', key='gemma_7b_it', hub_id='google/gemma-7b-it',
          title='Gemma-7B-it', template='gemma', template_why=GEMMA_WHY,
          zoo=methods(qlora=['alpaca', 'oasst1', 'custom_sft'])),
    # Baichuan / ChatGLM
    Model(family='baichuan', key='baichuan2_7b_chat', hub_id='baichuan-inc/Baichuan2-7B-Chat',
          title='Baichuan2-7B-Chat', template='baichuan2_chat',
          template_why="Baichuan2-Chat's '<reserved_106>...<reserved_107>' turn markers.",
          zoo=methods(qlora=ZH_SETS, lora=['alpaca_zh'], full=[])),
    Model(family='chatglm', key='chatglm3_6b', hub_id='THUDM/chatglm3-6b',
          title='ChatGLM3-6B', template='chatglm3',
          template_why="ChatGLM3's '<|user|> ... <|assistant|>' format.",
          zoo=methods(qlora=ZH_SETS, lora=['alpaca_zh'], full=[])),
    # DeepSeek
    Model(family='deepseek', key='deepseek_coder_6_7b_instruct',
          hub_id='deepseek-ai/deepseek-coder-6.7b-instruct',
          title='DeepSeek-Coder-6.7B-Instruct', template='deepseek_coder',
          template_why="DeepSeek-Coder's '### Instruction: ... ### Response:' format with its own system text.",
          zoo=methods(qlora=['code_alpaca', 'custom_sft'], lora=['code_alpaca'], full=[])),
    Model(family='deepseek', key='deepseek_moe_16b_chat', hub_id='deepseek-ai/deepseek-moe-16b-chat',
          title='DeepSeek-MoE-16B-Chat (mixture of experts)', template='deepseek_moe',
          template_why="DeepSeek-MoE-Chat's 'User: ... Assistant:' format.",
          zoo=methods(qlora=['alpaca', 'oasst1', 'custom_sft'], lora=[], full=[]),
          lora_target_modules=ATTENTION_ONLY,
          lora_target_modules_why='Attention only: adapting all 64 experts of each layer costs far more memory.'),
    # Yi
    Model(family='yi', key='yi_6b', hub_id='01-ai/Yi-6B', title='Yi-6B (base)',
          template='default', template_why=BASE_WHY,
          zoo=methods(qlora=['alpaca', 'alpaca_zh', 'oasst1'], lora=[], full=['custom_pretrain'])),
    # Phi-3
    Model(family='phi', key='phi3_mini_4k_instruct', hub_id='microsoft/Phi-3-mini-4k-instruct',
          title='Phi-3-mini-4k-instruct', template='phi3_chat',
          template_why="Phi-3's '<|user|> ... <|end|>' format.",
          max_length=4096, max_length_why='The model reads 4k tokens; packing fills each row to this length.',
          zoo=methods(qlora=CHAT_SETS)),
    # SmolLM2
    Model(family='smollm2', key='smollm2_135m_instruct', hub_id='HuggingFaceTB/SmolLM2-135M-Instruct',
          title='SmolLM2-135M-Instruct', template='chatml', template_why=SMOLLM2_WHY,
          zoo=methods(qlora=['alpaca', 'custom_sft'], lora=['alpaca', 'custom_conversation'],
                      full=['alpaca', 'custom_sft', 'custom_pretrain'])),
    Model(family='smollm2', key='smollm2_1_7b_instruct', hub_id='HuggingFaceTB/SmolLM2-1.7B-Instruct',
          title='SmolLM2-1.7B-Instruct', template='chatml', template_why=SMOLLM2_WHY,
          zoo=methods(qlora=['alpaca', 'oasst1', 'custom_sft'])),
]


# Preference configs: model key -> {method: dataset keys}. Two 7B-class families as XTuner has
# them, Qwen2.5, and SmolLM2-135M small enough to train on a CPU.
PREFERENCE_ZOO = {
    'internlm2_chat_7b': dict(dpo_qlora=['orpo_dpo_mix'], orpo_qlora=['orpo_dpo_mix'],
                              reward_qlora=['ultrafeedback']),
    'llama3_8b_instruct': dict(dpo_qlora=['orpo_dpo_mix'], orpo_qlora=['orpo_dpo_mix'],
                               reward_qlora=['ultrafeedback']),
    'qwen2_5_7b_instruct': dict(dpo_qlora=['orpo_dpo_mix', 'custom_preference'],
                                orpo_qlora=['orpo_dpo_mix'], reward_qlora=['ultrafeedback']),
    'smollm2_135m_instruct': dict(dpo_qlora=['custom_preference'], orpo_qlora=['custom_preference'],
                                  reward_qlora=['custom_preference']),
}


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One config the generator writes: a model, a method and a dataset (and, for a twin, the
    other name it is written under)."""
    model: Model
    method: str
    dataset: Dataset
    twin_name: Optional[str] = None

    @property
    def zoo_name(self) -> str:
        return f'{self.model.key}_{self.method}_{self.dataset.key}_e{self.dataset.epochs}'

    @property
    def name(self) -> str:
        return self.twin_name or self.zoo_name

    @property
    def body(self) -> str:
        """Which template, and so which shared PARTs 2-5, this config carries."""
        return 'pretrain' if self.dataset.pretrain else self.method

    @property
    def path(self) -> Path:
        """Relative to configs/: a twin sits at the top, a zoo config in its family's folder."""
        if self.twin_name:
            return Path(f'{self.twin_name}.py')
        return Path(self.model.family) / self.model.key / f'{self.name}.py'


# Configs written a second time under another name, at the top of configs/: name -> zoo name.
# internlm_7b_qlora_oasst1 is the README's example; as a twin it cannot drift from the zoo's file.
TWINS = {'internlm_7b_qlora_oasst1': 'internlm_7b_qlora_oasst1_e3'}


def zoo_entries() -> list:
    """Every config the generator writes: the zoo, then the twins."""
    entries = []
    for model in MODELS:
        for method, keys in model.zoo.items():
            for key in keys:
                if key not in DATASETS:
                    raise ValueError(f'model {model.key}: no dataset {key!r} in DATASETS')
                if DATASETS[key].preference:
                    raise ValueError(f'model {model.key}: {key} holds preference pairs; list it in '
                                     'PREFERENCE_ZOO')
                entries.append(Entry(model=model, method=method, dataset=DATASETS[key]))
    entries += preference_entries()
    by_name = {entry.name: entry for entry in entries}
    for twin, zoo_name in TWINS.items():
        if zoo_name not in by_name:
            raise ValueError(f'TWINS: {twin} names no zoo config {zoo_name!r}')
        entries.append(replace(by_name[zoo_name], twin_name=twin))
    return entries


def preference_entries() -> list:
    """The DPO, ORPO and reward-model configs of ``PREFERENCE_ZOO``."""
    models = {model.key: model for model in MODELS}
    entries = []
    for model_key, zoo in PREFERENCE_ZOO.items():
        if model_key not in models:
            raise ValueError(f'PREFERENCE_ZOO: no model {model_key!r} in MODELS')
        for method, keys in zoo.items():
            if method not in PREFERENCE_METHODS:
                raise ValueError(f'PREFERENCE_ZOO[{model_key!r}]: unknown method {method!r}; '
                                 f'expected {PREFERENCE_METHODS}')
            for key in keys:
                if key not in DATASETS or not DATASETS[key].preference:
                    raise ValueError(f'PREFERENCE_ZOO[{model_key!r}]: {key!r} is not a preference '
                                     'dataset of DATASETS')
                entries.append(Entry(model=models[model_key], method=method, dataset=DATASETS[key]))
    return entries


def entry_named(name: str) -> Optional[Entry]:
    return next((entry for entry in zoo_entries() if entry.name == name), None)


# --------------------------------------------------------------------------------------
# Rendering a template
# --------------------------------------------------------------------------------------
PLACEHOLDER = re.compile(r'\{\{ (\w+) \}\}')
BANNER = '#' * 71


def banner(title: str) -> str:
    return f'{BANNER}\n#{title:^69s}#\n{BANNER}\n'


PART2_BANNER = banner('PART 2  Model & Tokenizer')


def split_body(text: str) -> tuple:
    """(header + imports + PART 1, PARTs 2-5) of a config's or a template's text."""
    head, found, rest = text.partition(PART2_BANNER)
    if not found:
        raise ValueError('no PART 2 banner')
    return head, PART2_BANNER + rest


def template_text(body: str) -> str:
    return (TEMPLATES / f'{body}.py').read_text(encoding='utf-8')


def render_template(template: str, values: dict) -> str:
    """Fill the ``{{ name }}`` placeholders above PART 2; PARTs 2-5 are kept verbatim.

    A comment line longer than ``LINE_LIMIT`` is wrapped, and a comment line that held only a
    placeholder whose value is empty is left out.

    >>> render_template('# {{ why }}\\nx = {{ x }}\\n# {{ note }}\\n' + PART2_BANNER,
    ...                 dict(why='Because.', x='1', note='')).split(BANNER)[0]
    '# Because.\\nx = 1\\n'
    """
    head, body = split_body(template)

    def value(match):
        if match.group(1) not in values:
            raise KeyError(f'template placeholder {{{{ {match.group(1)} }}}} has no value')
        return values[match.group(1)]

    lines = []
    for line in head.splitlines():
        filled = PLACEHOLDER.sub(value, line)
        if filled != line and filled.rstrip() == '#':
            continue
        if filled.startswith('# ') and len(filled) > LINE_LIMIT:
            filled = textwrap.fill(filled[2:], LINE_LIMIT, initial_indent='# ', subsequent_indent='# ')
        lines.append(filled)
    return '\n'.join(lines) + '\n' + body


def _string_list(items) -> str:
    return '[\n' + ''.join(f'    {item!r},\n' for item in items) + ']'


def template_values(entry: Entry) -> dict:
    """{placeholder: source text} for one config; a ``*_why`` is the comment above its setting."""
    model, dataset = entry.model, entry.dataset
    map_fn = dataset.map_fn.__name__ if dataset.map_fn else None
    map_names = [name for name in [map_fn] if name] + ([] if dataset.pretrain else ['template_map_fn_factory'])
    system = system_source(dataset.system)
    utils = ['PROMPT_TEMPLATE'] + (['SYSTEM_TEMPLATE'] if system.startswith('SYSTEM_TEMPLATE.') else [])
    targets = model.lora_target_modules
    twin_note = ('' if not entry.twin_name else
                 f"The README's example under a short name: the same config as the zoo's "
                 f'{entry.zoo_name}.')
    return {
        'name': entry.name,
        'model_title': model.title,
        'dataset_title': dataset.title,
        'epochs': f'{dataset.epochs} epoch{"s" if dataset.epochs != 1 else ""}',
        'twin_note': twin_note,
        'map_fns_import': f'from xft.dataset.map_fns import {", ".join(map_names)}',
        'utils_import': f'from xft.utils import {", ".join(utils)}',
        'pretrained_model_name_or_path': repr(model.hub_id),
        'lora_target_modules': repr(list(targets) if targets is not None else None),
        'lora_target_modules_why': model.lora_target_modules_why,
        'data_path': repr(dataset.path),
        'data_path_why': dataset.path_why,
        'dataset_map_fn': str(map_fn),
        'dataset_map_fn_why': dataset.map_fn_why,
        'prompt_template': f'PROMPT_TEMPLATE.{model.template}',
        'prompt_template_why': model.template_why,
        'max_length': repr(model.max_length),
        'max_length_why': PREFERENCE_MAX_LENGTH_WHY if dataset.preference else model.max_length_why,
        'max_epochs': repr(dataset.epochs),
        'max_epochs_why': dataset.epochs_why,
        'SYSTEM': system,
        'SYSTEM_why': dataset.system_why,
        'evaluation_inputs': _string_list(dataset.inputs),
        'held_out': repr(dataset.held_out),
        'held_out_why': dataset.held_out_why,
        'reward_token_id': repr(model.reward_token_id),
        'reward_token_id_why': model.reward_token_id_why,
    }


def render(entry: Entry) -> str:
    return render_template(template_text(entry.body), template_values(entry))


def rendered_zoo() -> dict:
    """{path relative to configs/: text} for every config the generator writes."""
    return {entry.path: render(entry) for entry in zoo_entries()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m xft.tools.gen_configs',
                                     description='Write the config zoo from its table.')
    parser.add_argument('--out', default=str(REPO_CONFIGS), help='the configs folder')
    parser.add_argument('--check', action='store_true', help='only list the files that differ')
    args = parser.parse_args(argv)
    out = Path(args.out)
    rendered = rendered_zoo()
    differ = []
    for rel, text in rendered.items():
        path = out / rel
        if not path.is_file() or path.read_text(encoding='utf-8') != text:
            differ.append(rel)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding='utf-8')
    verb = 'differ' if args.check else 'written'
    print(f'{len(differ)} of {len(rendered)} configs {verb}')
    for rel in differ:
        print(f'  {rel}')
    return 1 if args.check and differ else 0


if __name__ == '__main__':
    sys.exit(main())
