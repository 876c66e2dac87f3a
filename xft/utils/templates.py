"""Prompt templates (XTuner 0.1.x names and strings) and task system prompts.

What carries loss: for every turn the encoder trains on ``output`` + ``SUFFIX`` (and the tokenizer's
EOS when ``SUFFIX_AS_EOS`` is False). ``SYSTEM``, ``INSTRUCTION`` (the user's ``input``), ``SEP`` and
the BOS never carry loss::

    turn 0:  SYSTEM + INSTRUCTION, [output + SUFFIX (+ EOS)], SEP
    turn 1:  INSTRUCTION,          [output + SUFFIX (+ EOS)], SEP
    ...                            ([] = trained)

Fields: ``SYSTEM`` holds ``{system}``; ``INSTRUCTION`` holds ``{input}`` and optionally ``{round}``
(1-based turn number); ``SUFFIX`` is appended to each output; ``SUFFIX_AS_EOS`` True means the
suffix ends the answer and no tokenizer EOS is added; ``SEP`` follows each turn but the last;
``STOP_WORDS`` are for generation. Missing fields mean: no suffix, EOS added, no separator.

``hf_chat_template`` is a marker rather than a template: with it the encoder renders each
conversation with the tokenizer's own jinja ``chat_template``, so a model that ships one trains in
exactly its own format (the assistant part of each turn is trained, trailing whitespace excepted).

The strings are facts copied from XTuner 0.1.x (``xtuner/utils/templates.py``); ``chatml`` and
``hf_chat_template`` are xft's own.
"""
from mmengine.config import ConfigDict

# The key that marks "render with the tokenizer's chat_template" (see hf_chat_template below).
USE_TOKENIZER_CHAT_TEMPLATE = 'USE_TOKENIZER_CHAT_TEMPLATE'

_DEEPSEEK_CODER_SYSTEM = (
    'You are an AI programming assistant, utilizing '
    'the DeepSeek Coder model, developed by DeepSeek'
    'Company, and you only answer questions related '
    'to computer science. For politically sensitive '
    'questions, security and privacy issues, and '
    'other non-computer science questions, you will '
    'refuse to answer. {system}\n')
_VICUNA_SYSTEM = (
    'A chat between a curious user and an artificial '
    'intelligence assistant. The assistant gives '
    'helpful, detailed, and polite answers to the '
    "user's questions. {system}\n ")

PROMPT_TEMPLATE = ConfigDict(
    default=dict(
        SYSTEM='<|System|>:{system}\n',
        INSTRUCTION='<|User|>:{input}\n<|Bot|>:',
        SEP='\n'),
    zephyr=dict(
        SYSTEM='<|system|>\n{system}\n',
        INSTRUCTION='<|user|>\n{input}\n<|assistant|>\n',
        SEP='\n'),
    internlm_chat=dict(
        SYSTEM='<|System|>:{system}\n',
        INSTRUCTION='<|User|>:{input}<eoh>\n<|Bot|>:',
        SUFFIX='<eoa>',
        SUFFIX_AS_EOS=True,
        SEP='\n',
        STOP_WORDS=['<eoa>']),
    internlm2_chat=dict(
        SYSTEM='<|im_start|>system\n{system}<|im_end|>\n',
        INSTRUCTION=('<|im_start|>user\n{input}<|im_end|>\n'
                     '<|im_start|>assistant\n'),
        SUFFIX='<|im_end|>',
        SUFFIX_AS_EOS=True,
        SEP='\n',
        STOP_WORDS=['<|im_end|>']),
    moss_sft=dict(
        SYSTEM='{system}\n',
        INSTRUCTION='<|Human|>: {input}<eoh>\n',
        SEP='\n',
        STOP_WORDS=['<eoc>', '<eom>']),
    llama2_chat=dict(
        SYSTEM=(
            '[INST] <<SYS>>\n You are a helpful, respectful and honest '
            'assistant. Always answer as helpfully as possible, while being '
            'safe. Your answers should not include any harmful, unethical, '
            'racist, sexist, toxic, dangerous, or illegal content. Please '
            'ensure that your responses are socially unbiased and positive in '
            'nature.\n{system}\n<</SYS>>\n [/INST] '),
        INSTRUCTION='[INST] {input} [/INST]',
        SEP='\n'),
    code_llama_chat=dict(
        SYSTEM='{system}\n', INSTRUCTION='[INST] {input} [/INST]'),
    chatglm2=dict(
        SYSTEM='{system}\n',
        INSTRUCTION='[Round {round}]\n\n问：{input}\n\n答：',
        SEP='\n\n'),
    chatglm3=dict(
        SYSTEM='<|system|>\n{system}',
        INSTRUCTION='<|user|>\n{input}<|assistant|>\n',
        SEP='\n'),
    qwen_chat=dict(
        SYSTEM='<|im_start|>system\n{system}<|im_end|>\n',
        INSTRUCTION=('<|im_start|>user\n{input}<|im_end|>\n'
                     '<|im_start|>assistant\n'),
        SUFFIX='<|im_end|>',
        SUFFIX_AS_EOS=True,
        SEP='\n',
        STOP_WORDS=['<|im_end|>', '<|endoftext|>']),
    baichuan_chat=dict(
        SYSTEM='{system}\n',
        INSTRUCTION='<reserved_102>{input}<reserved_103>',
        SEP='\n'),
    baichuan2_chat=dict(
        SYSTEM='{system}\n',
        INSTRUCTION='<reserved_106>{input}<reserved_107>',
        SEP='\n'),
    wizardlm=dict(
        SYSTEM=_VICUNA_SYSTEM,
        INSTRUCTION='USER: {input} ASSISTANT:',
        SEP='\n'),
    wizardcoder=dict(
        SYSTEM=(
            'Below is an instruction that describes a task. '
            'Write a response that appropriately completes the request.\n\n'
            '{system}\n '),
        INSTRUCTION='### Instruction:\n{input}\n\n### Response:',
        SEP='\n\n'),
    vicuna=dict(
        SYSTEM=_VICUNA_SYSTEM,
        INSTRUCTION='USER: {input} ASSISTANT:',
        SEP='\n'),
    deepseek_coder=dict(
        SYSTEM=_DEEPSEEK_CODER_SYSTEM,
        INSTRUCTION='### Instruction:\n{input}\n### Response:\n',
        SEP='\n'),
    # Deprecated spelling kept because XTuner configs still use it.
    deepseekcoder=dict(
        SYSTEM=_DEEPSEEK_CODER_SYSTEM,
        INSTRUCTION='### Instruction:\n{input}\n### Response:\n',
        SEP='\n'),
    deepseek_moe=dict(
        SYSTEM='[INST] {system} [/INST]\n',
        INSTRUCTION='[INST] {input} [/INST]',
        SEP='\n'),
    deepseek_v2=dict(
        SYSTEM='{system}\n\n',
        INSTRUCTION='User: {input}\n\nAssistant: ',
        SUFFIX='<｜end▁of▁sentence｜>',
        SUFFIX_AS_EOS=True,
        STOP_WORDS=['<｜end▁of▁sentence｜>']),
    mistral=dict(
        SYSTEM='[INST] {system} [/INST]\n',
        INSTRUCTION='[INST] {input} [/INST]',
        SEP='\n'),
    mixtral=dict(
        SYSTEM='[INST] {system} [/INST]\n',
        INSTRUCTION='[INST] {input} [/INST]',
        SEP='\n'),
    minicpm=dict(INSTRUCTION='<用户> {input} <AI>', SEP='\n'),
    minicpm3=dict(
        SYSTEM='<|im_start|>system\n{system}<|im_end|>\n',
        INSTRUCTION=('<|im_start|>user\n{input}<|im_end|>\n'
                     '<|im_start|>assistant\n'),
        SUFFIX='<|im_end|>',
        SUFFIX_AS_EOS=True,
        SEP='\n',
        STOP_WORDS=['<|im_end|>', '<|endoftext|>']),
    gemma=dict(
        # The system turn is XTuner's extension; Gemma itself has none.
        SYSTEM='<start_of_turn>system\n{system}<end_of_turn>\n',
        INSTRUCTION=('<start_of_turn>user\n{input}<end_of_turn>\n'
                     '<start_of_turn>model\n'),
        SUFFIX='<end_of_turn>',
        SUFFIX_AS_EOS=False,
        SEP='\n',
        STOP_WORDS=['<end_of_turn>']),
    cohere_chat=dict(
        SYSTEM=('<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{system}'
                '<|END_OF_TURN_TOKEN|>'),
        INSTRUCTION=(
            '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{input}<|END_OF_TURN_TOKEN|>'
            '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'),
        SUFFIX='<|END_OF_TURN_TOKEN|>',
        SUFFIX_AS_EOS=True,
        STOP_WORDS=['<|END_OF_TURN_TOKEN|>']),
    llama3_chat=dict(
        SYSTEM=('<|start_header_id|>system<|end_header_id|>\n\n'
                '{system}<|eot_id|>'),
        INSTRUCTION=(
            '<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|>'
            '<|start_header_id|>assistant<|end_header_id|>\n\n'),
        SUFFIX='<|eot_id|>',
        SUFFIX_AS_EOS=True,
        STOP_WORDS=['<|eot_id|>']),
    phi3_chat=dict(
        SYSTEM='<|system|>\n{system}<|end|>\n',
        INSTRUCTION='<|user|>\n{input}<|end|>\n<|assistant|>\n',
        SUFFIX='<|end|>',
        SUFFIX_AS_EOS=True,
        SEP='\n',
        STOP_WORDS=['<|end|>']),
    # xft: SmolLM2 / ChatML. Same strings as SmolLM2-Instruct's jinja chat_template.
    chatml=dict(
        SYSTEM='<|im_start|>system\n{system}<|im_end|>\n',
        INSTRUCTION=('<|im_start|>user\n{input}<|im_end|>\n'
                     '<|im_start|>assistant\n'),
        SUFFIX='<|im_end|>',
        SUFFIX_AS_EOS=True,
        SEP='\n',
        STOP_WORDS=['<|im_end|>']),
    # xft: render with the tokenizer's own jinja chat_template (see the module docstring).
    hf_chat_template={USE_TOKENIZER_CHAT_TEMPLATE: True},
)

SYSTEM_TEMPLATE = ConfigDict(
    moss_sft=('You are an AI assistant whose name is {bot_name}.\n'
              'Capabilities and tools that {bot_name} can possess.\n'
              '- Inner thoughts: enabled.\n'
              '- Web search: enabled. API: Search(query)\n'
              '- Calculator: enabled. API: Calculate(expression)\n'
              '- Equation solver: enabled. API: Solve(equation)\n'
              '- Text-to-image: disabled.\n'
              '- Image edition: disabled.\n'
              '- Text-to-speech: disabled.\n'),
    alpaca=('Below is an instruction that describes a task. '
            'Write a response that appropriately completes the request.\n'),
    arxiv_gentile=('If you are an expert in writing papers, please generate '
                   "a good paper title for this paper based on other authors' "
                   'descriptions of their abstracts.\n'),
    colorist=('You are a professional color designer. Please provide the '
              'corresponding colors based on the description of Human.\n'),
    coder=('You are a professional programer. Please provide the '
           'corresponding code based on the description of Human.\n'),
    lawyer='你现在是一名专业的中国律师，请根据用户的问题给出准确、有理有据的回复。\n',
    medical='如果你是一名医生，请根据患者的描述回答医学问题。\n',
    sql=('If you are an expert in SQL, please generate a good SQL Query '
         'for Question based on the CREATE TABLE statement.\n'),
)
