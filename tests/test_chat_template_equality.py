"""One prompt format everywhere: training encode, the chat's generation prompt, and the
chat_template that pth_to_hf exports produce the same token ids."""
import copy

import pytest
from transformers import AutoTokenizer

from xft.dataset.conversation import normalize_conversation
from xft.dataset.encode import encode_conversation
from xft.dataset.map_fns.template import template_map_fn
from xft.model.chat_template import chat_template_jinja, save_tokenizer_with_chat_template
from xft.model.generation import encode_for_generation
from xft.utils import PROMPT_TEMPLATE

SYSTEM = 'Be brief.'
HISTORY = [('What is the capital of France?', 'Paris, of course.')]
QUESTION = 'And of Germany?'
REPLY = 'Berlin.'
TEMPLATE_NAMES = sorted(name for name in PROMPT_TEMPLATE if name != 'hf_chat_template')
# Templates whose pieces merge across boundaries under SmolLM2's BPE (see chat_template.py).
SMOLLM2_MERGING = {'chatglm2', 'wizardcoder', 'deepseek_v2', 'cohere_chat', 'llama3_chat'}


def training_ids(template, tokenizer):
    """What training encodes for the whole conversation, the new question answered."""
    turns = [{'system': SYSTEM, 'input': HISTORY[0][0], 'output': HISTORY[0][1]},
             {'input': QUESTION, 'output': REPLY}]
    turns = normalize_conversation(turns, 'test', allow_empty=False)
    templated = template_map_fn({'conversation': turns}, template)['conversation']
    return encode_conversation(templated, tokenizer, max_length=10**6)['input_ids']


def messages(with_reply):
    rendered = [{'role': 'system', 'content': SYSTEM},
                {'role': 'user', 'content': HISTORY[0][0]},
                {'role': 'assistant', 'content': HISTORY[0][1]},
                {'role': 'user', 'content': QUESTION}]
    return rendered + ([{'role': 'assistant', 'content': REPLY}] if with_reply else [])


def jinja_ids(tokenizer, template, with_reply):
    tokenizer.chat_template = chat_template_jinja(template)
    text = tokenizer.apply_chat_template(messages(with_reply), tokenize=False,
                                         add_generation_prompt=not with_reply)
    return tokenizer(text, add_special_tokens=False)['input_ids']


def test_every_template_is_covered():
    assert len(TEMPLATE_NAMES) == len(PROMPT_TEMPLATE) - 1 >= 27


@pytest.mark.parametrize('name', TEMPLATE_NAMES)
def test_generation_prompt_is_the_training_sample_up_to_the_reply(tiny_tokenizer, name):
    template = PROMPT_TEMPLATE[name]
    prompt = encode_for_generation(HISTORY, QUESTION, template, tiny_tokenizer, system=SYSTEM)
    train = training_ids(template, tiny_tokenizer)
    assert train[:len(prompt)] == prompt
    reply_ids = tiny_tokenizer(REPLY, add_special_tokens=False)['input_ids']
    assert train[len(prompt):len(prompt) + len(reply_ids)] == reply_ids


@pytest.mark.parametrize('name', TEMPLATE_NAMES)
def test_exported_chat_template_gives_training_ids(tiny_tokenizer, name):
    template = PROMPT_TEMPLATE[name]
    tokenizer = copy.deepcopy(tiny_tokenizer)  # the session fixture must keep its template
    prompt = encode_for_generation(HISTORY, QUESTION, template, tokenizer, system=SYSTEM)
    assert jinja_ids(tokenizer, template, with_reply=False) == prompt
    assert jinja_ids(tokenizer, template, with_reply=True) == training_ids(template, tokenizer)


def test_saved_tokenizer_carries_the_template_and_round_numbers(tmp_path, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    assert save_tokenizer_with_chat_template(tokenizer, PROMPT_TEMPLATE.chatglm2, tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    text = loaded.apply_chat_template(messages(with_reply=True), tokenize=False)
    # chatglm2 numbers its rounds: the second question is round 2.
    assert '[Round 1]' in text and '[Round 2]' in text
    assert not save_tokenizer_with_chat_template(copy.deepcopy(tiny_tokenizer),
                                                 PROMPT_TEMPLATE.hf_chat_template, tmp_path / 'x')


@pytest.mark.slow
def test_chatml_prompt_equals_smollm2s_own_chat_template():
    """Ground truth: the model's shipped jinja (SmolLM2's BOS is <|im_start|>, never doubled)."""
    from xft.tools.prepare_demo_model import prepare_demo_model
    tokenizer = AutoTokenizer.from_pretrained(str(prepare_demo_model()))
    own = tokenizer.apply_chat_template(messages(with_reply=False), tokenize=False,
                                        add_generation_prompt=True)
    own_ids = tokenizer(own, add_special_tokens=False)['input_ids']
    ours = encode_for_generation(HISTORY, QUESTION, 'chatml', tokenizer, system=SYSTEM)
    assert ours == own_ids
    # ... and hf_chat_template (the model's own jinja) gives the same prompt.
    assert encode_for_generation(HISTORY, QUESTION, 'hf_chat_template', tokenizer,
                                 system=SYSTEM) == own_ids
    for name in TEMPLATE_NAMES:
        template = PROMPT_TEMPLATE[name]
        prompt = encode_for_generation(HISTORY, QUESTION, template, tokenizer, system=SYSTEM)
        exported = jinja_ids(tokenizer, template, with_reply=False)
        assert tokenizer.decode(exported) == tokenizer.decode(prompt), name
        assert (exported == prompt) == (name not in SMOLLM2_MERGING), name
