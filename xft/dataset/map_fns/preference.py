"""Preference sets: one row = a prompt and two answers to it, the chosen and the rejected one.

Each function is a pure function of one row returning XTuner 0.1.23's preference format, in
OpenAI chat messages::

    {'prompt': [{'role': 'system'|'user'|'assistant', 'content': ...}, ..., {'role': 'user', ...}],
     'chosen': [{'role': 'assistant', 'content': ...}],
     'rejected': [{'role': 'assistant', 'content': ...}]}

which is also the format ``build_preference_dataset`` reads without a map fn (XTuner's
``load_jsonl_dataset`` files). Checks that hold for every format (the prompt ends with a user
turn, no answer is empty) are made once, in ``xft.dataset.preference_pairs``.
"""
from xft.registry import register_map_fn
from xft.utils.errors import DataError

from ._fields import require_list, require_text
from .chat import SHAREGPT_MESSAGE_FIELDS

# ShareGPT speakers of a preference prompt, as chat roles.
_SHAREGPT_ROLES = {'system': 'system', 'human': 'user', 'user': 'user',
                   'gpt': 'assistant', 'assistant': 'assistant'}


def _message(role, content):
    return {'role': role, 'content': content}


def _sharegpt_answer(example, key, map_fn):
    """The ``{'from': 'gpt', 'value': ...}`` answer under ``key``, as one assistant message."""
    answer = example.get(key) if isinstance(example, dict) else None
    if answer is None:
        require_text(example, key, map_fn)  # raises, naming the expected fields
    if not isinstance(answer, dict):
        raise DataError(f"{map_fn.__name__}: field {key!r} is {type(answer).__name__}, expected "
                        f"one message {{'from': 'gpt', 'value': ...}}")
    speaker = require_text(answer, 'from', map_fn, expected=SHAREGPT_MESSAGE_FIELDS)
    if _SHAREGPT_ROLES.get(speaker) != 'assistant':
        raise DataError(f"{map_fn.__name__}: field {key!r} is from {speaker!r}; expected an answer "
                        "from 'gpt'")
    return [_message('assistant', require_text(answer, 'value', map_fn,
                                               expected=SHAREGPT_MESSAGE_FIELDS))]


@register_map_fn(fields=('conversations [{from: human|gpt|system, value}], ending with human',
                         'chosen {from: gpt, value}', 'rejected {from: gpt, value}',
                         'system (optional)'))
def sharegpt_preference_map_fn(example):
    """ShareGPT preference pairs (LLaMA-Factory's ``dpo_en_demo.json`` layout).

    Before (preference/dpo_en_demo_250.json row 0, shortened)::

        {'conversations': [{'from': 'human', 'value': "Hi! I'd like to create a new language
                            game simulating the first person perspective of a character named
                            Angela."}],
         'chosen': {'from': 'gpt', 'value': 'That sounds like a fun and engaging idea! ...'},
         'rejected': {'from': 'gpt', 'value': "That sounds like a fun and interesting ..."}}

    After::

        {'prompt': [{'role': 'user', 'content': "Hi! I'd like to create a new language game
                     simulating ..."}],
         'chosen': [{'role': 'assistant', 'content': 'That sounds like a fun and engaging ...'}],
         'rejected': [{'role': 'assistant', 'content': "That sounds like a fun and ..."}]}
    """
    messages = require_list(example, 'conversations', sharegpt_preference_map_fn)
    chosen = _sharegpt_answer(example, 'chosen', sharegpt_preference_map_fn)
    rejected = _sharegpt_answer(example, 'rejected', sharegpt_preference_map_fn)
    system = example.get('system') if isinstance(example.get('system'), str) else ''
    prompt = [_message('system', system)] if system else []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f'sharegpt_preference_map_fn: message {position} is '
                            f"{type(message).__name__}, expected a dict with 'from' and 'value'")
        speaker = require_text(message, 'from', sharegpt_preference_map_fn,
                               expected=SHAREGPT_MESSAGE_FIELDS)
        if speaker not in _SHAREGPT_ROLES:
            raise DataError(f'sharegpt_preference_map_fn: message {position} is from {speaker!r}; '
                            f'expected one of {sorted(_SHAREGPT_ROLES)}')
        prompt.append(_message(_SHAREGPT_ROLES[speaker],
                               require_text(message, 'value', sharegpt_preference_map_fn,
                                            expected=SHAREGPT_MESSAGE_FIELDS)))
    return {'prompt': prompt, 'chosen': chosen, 'rejected': rejected}


@register_map_fn(fields=('chosen [{role, content}]', 'rejected [{role, content}]'))
def orpo_dpo_mix_40k_map_fn(example):
    """mlabonne/orpo-dpo-mix-40k (and argilla/ultrafeedback-binarized-preferences-cleaned):
    ``chosen`` and ``rejected`` are whole conversations that differ in the last message.

    Before::

        {'chosen': [{'role': 'user', 'content': 'What is 2 + 2?'},
                    {'role': 'assistant', 'content': '4.'}],
         'rejected': [{'role': 'user', 'content': 'What is 2 + 2?'},
                      {'role': 'assistant', 'content': '5.'}]}

    After::

        {'prompt': [{'role': 'user', 'content': 'What is 2 + 2?'}],
         'chosen': [{'role': 'assistant', 'content': '4.'}],
         'rejected': [{'role': 'assistant', 'content': '5.'}]}
    """
    chosen = require_list(example, 'chosen', orpo_dpo_mix_40k_map_fn)
    rejected = require_list(example, 'rejected', orpo_dpo_mix_40k_map_fn)
    if len(chosen) != len(rejected):
        raise DataError(f"orpo_dpo_mix_40k_map_fn: 'chosen' has {len(chosen)} messages and "
                        f"'rejected' {len(rejected)}; expected the same conversation with a "
                        'different last message')
    return {'prompt': list(chosen[:-1]), 'chosen': list(chosen[-1:]),
            'rejected': list(rejected[-1:])}


@register_map_fn(fields=('system (optional)', 'question', 'chosen', 'rejected'))
def intel_orca_dpo_map_fn(example):
    """Intel/orca_dpo_pairs: ``system``, ``question``, ``chosen``, ``rejected`` as plain text.

    Before::

        {'system': 'You are an AI assistant.', 'question': 'Is the sky blue?',
         'chosen': 'Yes, on a clear day.', 'rejected': 'No.'}

    After::

        {'prompt': [{'role': 'system', 'content': 'You are an AI assistant.'},
                    {'role': 'user', 'content': 'Is the sky blue?'}],
         'chosen': [{'role': 'assistant', 'content': 'Yes, on a clear day.'}],
         'rejected': [{'role': 'assistant', 'content': 'No.'}]}

    An empty ``system`` adds no system message.
    """
    system = require_text(example, 'system', intel_orca_dpo_map_fn, default='')
    question = require_text(example, 'question', intel_orca_dpo_map_fn)
    chosen = require_text(example, 'chosen', intel_orca_dpo_map_fn)
    rejected = require_text(example, 'rejected', intel_orca_dpo_map_fn)
    prompt = ([_message('system', system)] if system else []) + [_message('user', question)]
    return {'prompt': prompt, 'chosen': [_message('assistant', chosen)],
            'rejected': [_message('assistant', rejected)]}
