"""Prompt templates: XTuner's strings exactly, and chatml equal to a real ChatML jinja template."""
import pytest

from xft.dataset.conversation import normalize_conversation
from xft.dataset.encode import encode_conversation, encode_with_chat_template
from xft.dataset.map_fns import template_map_fn, template_map_fn_factory
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError
from xft.utils.templates import PROMPT_TEMPLATE, SYSTEM_TEMPLATE

XTUNER_TEMPLATES = [
    'default', 'zephyr', 'internlm_chat', 'internlm2_chat', 'moss_sft', 'llama2_chat',
    'code_llama_chat', 'chatglm2', 'chatglm3', 'qwen_chat', 'baichuan_chat', 'baichuan2_chat',
    'wizardlm', 'wizardcoder', 'vicuna', 'deepseek_coder', 'deepseek_moe', 'deepseek_v2',
    'mistral', 'mixtral', 'minicpm', 'gemma', 'cohere_chat', 'llama3_chat', 'phi3_chat',
    'deepseekcoder']
CHATML_JINJA = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CONVERSATION = [
    {'system': 'You are a poet.', 'input': 'Who are you?', 'output': 'A humble poet.'},
    {'input': 'Write a line about the sea.', 'output': 'The sea is wide, the sea is deep.'},
]


def render(template_name, turns=CONVERSATION):
    conversation = normalize_conversation(turns, 'test', allow_empty=False)
    templated = template_map_fn({'conversation': conversation}, PROMPT_TEMPLATE[template_name])
    return ''.join(t['input'] + t['output'] + t['sep'] for t in templated['conversation'])


def test_all_xtuner_templates_are_there_with_their_fields():
    assert set(XTUNER_TEMPLATES) <= set(PROMPT_TEMPLATE)
    allowed = {'SYSTEM', 'INSTRUCTION', 'SUFFIX', 'SUFFIX_AS_EOS', 'SEP', 'STOP_WORDS'}
    for name in XTUNER_TEMPLATES:
        assert set(PROMPT_TEMPLATE[name]) <= allowed, name
        assert '{input}' in PROMPT_TEMPLATE[name]['INSTRUCTION'], name


@pytest.mark.parametrize('name, expected', [
    ('internlm2_chat',
     '<|im_start|>system\nYou are a poet.<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n'
     '<|im_start|>assistant\nA humble poet.<|im_end|>\n<|im_start|>user\nWrite a line about the '
     'sea.<|im_end|>\n<|im_start|>assistant\nThe sea is wide, the sea is deep.<|im_end|>\n'),
    ('llama3_chat',
     '<|start_header_id|>system<|end_header_id|>\n\nYou are a poet.<|eot_id|>'
     '<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>'
     '<|start_header_id|>assistant<|end_header_id|>\n\nA humble poet.<|eot_id|>'
     '<|start_header_id|>user<|end_header_id|>\n\nWrite a line about the sea.<|eot_id|>'
     '<|start_header_id|>assistant<|end_header_id|>\n\nThe sea is wide, the sea is deep.'
     '<|eot_id|>'),
    ('default',
     '<|System|>:You are a poet.\n<|User|>:Who are you?\n<|Bot|>:A humble poet.\n'
     '<|User|>:Write a line about the sea.\n<|Bot|>:The sea is wide, the sea is deep.\n'),
    ('chatglm2',
     'You are a poet.\n[Round 1]\n\n问：Who are you?\n\n答：A humble poet.\n\n'
     '[Round 2]\n\n问：Write a line about the sea.\n\n答：The sea is wide, the sea is deep.\n\n'),
    ('mistral',
     '[INST] You are a poet. [/INST]\n[INST] Who are you? [/INST]A humble poet.\n'
     '[INST] Write a line about the sea. [/INST]The sea is wide, the sea is deep.\n'),
    ('phi3_chat',
     '<|system|>\nYou are a poet.<|end|>\n<|user|>\nWho are you?<|end|>\n<|assistant|>\n'
     'A humble poet.<|end|>\n<|user|>\nWrite a line about the sea.<|end|>\n<|assistant|>\n'
     'The sea is wide, the sea is deep.<|end|>\n'),
    ('gemma',
     '<start_of_turn>system\nYou are a poet.<end_of_turn>\n<start_of_turn>user\nWho are you?'
     '<end_of_turn>\n<start_of_turn>model\nA humble poet.<end_of_turn>\n<start_of_turn>user\n'
     'Write a line about the sea.<end_of_turn>\n<start_of_turn>model\nThe sea is wide, the sea '
     'is deep.<end_of_turn>\n'),
])
def test_templates_render_exactly(name, expected):
    assert render(name) == expected


def test_suffix_as_eos_and_stop_words_facts():
    assert PROMPT_TEMPLATE.gemma.SUFFIX_AS_EOS is False  # gemma adds the EOS after <end_of_turn>
    assert PROMPT_TEMPLATE.qwen_chat.STOP_WORDS == ['<|im_end|>', '<|endoftext|>']
    assert PROMPT_TEMPLATE.deepseek_v2.SUFFIX == '<｜end▁of▁sentence｜>'
    assert 'SEP' not in PROMPT_TEMPLATE.llama3_chat
    assert SYSTEM_TEMPLATE.alpaca.startswith('Below is an instruction that describes a task.')


def test_template_map_fn_builds_new_turns():
    conversation = normalize_conversation(CONVERSATION, 'test', allow_empty=False)
    before = [dict(turn) for turn in conversation]
    template_map_fn({'conversation': conversation}, PROMPT_TEMPLATE.chatml)
    assert conversation == before


def test_unknown_template_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown prompt template 'chatmll'; did you mean 'chatml'\\? \\(known: "):
        template_map_fn_factory('chatmll')
    assert template_map_fn_factory('chatml').template is PROMPT_TEMPLATE.chatml


def tiny_chatml_tokenizer(tiny_tokenizer):
    import copy
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = CHATML_JINJA
    return tokenizer


@pytest.mark.parametrize('source', ['tiny ChatML jinja', pytest.param('SmolLM2', marks=pytest.mark.slow)])
def test_chatml_template_and_the_jinja_chat_template_give_identical_ids(source, tiny_tokenizer):
    from transformers import AutoTokenizer

    from xft.tools.prepare_demo_model import prepare_demo_model
    tokenizer = tiny_chatml_tokenizer(tiny_tokenizer) if source == 'tiny ChatML jinja' else \
        AutoTokenizer.from_pretrained(str(prepare_demo_model(log=lambda message: None)))
    conversation = normalize_conversation(CONVERSATION, 'test', allow_empty=False)
    templated = template_map_fn({'conversation': conversation}, PROMPT_TEMPLATE.chatml)
    ours = encode_conversation(templated['conversation'], tokenizer, 4096)
    from xft.dataset.encode import conversation_to_messages
    theirs = tokenizer.apply_chat_template(conversation_to_messages(conversation),
                                           tokenize=True)['input_ids']
    assert ours['input_ids'] == list(theirs)
    # Rendering through the jinja itself (template hf_chat_template) trains the same tokens.
    via_jinja = encode_with_chat_template(conversation, tokenizer, 4096)
    assert via_jinja['input_ids'] == ours['input_ids']
    assert via_jinja['labels'] == ours['labels']


def test_hf_chat_template_trains_only_the_replies(tiny_tokenizer):
    tokenizer = tiny_chatml_tokenizer(tiny_tokenizer)
    turns = [dict(CONVERSATION[0], output_with_loss=False), CONVERSATION[1]]
    conversation = normalize_conversation(turns, 'test', allow_empty=False)
    sample = encode_with_chat_template(conversation, tokenizer, 4096)
    trained = [t for t, label in zip(sample['input_ids'], sample['labels'])
               if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == 'The sea is wide, the sea is deep.<|im_end|>'


def test_hf_chat_template_needs_a_chat_template(tiny_tokenizer):
    conversation = normalize_conversation(CONVERSATION, 'test', allow_empty=False)
    with pytest.raises(ConfigError, match='chat_template'):
        encode_with_chat_template(conversation, tiny_tokenizer, 4096)


def test_hf_chat_template_without_generation_prompt_is_refused(tiny_tokenizer):
    import copy
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = CHATML_JINJA.split('{% if add_generation_prompt %}')[0]
    conversation = normalize_conversation(CONVERSATION, 'test', allow_empty=False)
    with pytest.raises(ConfigError, match='ignores add_generation_prompt'):
        encode_with_chat_template(conversation, tokenizer, 4096)


def test_hf_chat_template_prompt_only_ends_with_the_generation_prompt(tiny_tokenizer):
    tokenizer = tiny_chatml_tokenizer(tiny_tokenizer)
    conversation = normalize_conversation(CONVERSATION, 'test', allow_empty=False)
    sample = encode_with_chat_template(conversation, tokenizer, 4096, input_ids_with_output=False)
    assert tokenizer.decode(sample['input_ids']) == (
        '<s><|im_start|>system\nYou are a poet.<|im_end|>\n<|im_start|>user\nWho are you?'
        '<|im_end|>\n<|im_start|>assistant\n')
    assert sample['num_trained_tokens'] == 0
