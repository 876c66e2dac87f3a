"""Multi-turn chat sets: guanaco text, OpenAI messages, ShareGPT conversations.

Pure functions of one row returning ``{'conversation': [{'system', 'input', 'output'}, ...]}``.
A trailing user message with no reply is dropped: it would carry no loss. A conversation with
no reply at all maps to [] and the pipeline drops and counts the row.
"""
import re

from xft.registry import register_map_fn
from xft.utils.errors import DataError

from ._fields import require_list, require_text

# Guanaco marks turns with '### Human:' / '### Assistant:'. Splitting on these markers (not on
# every '###', as XTuner does) keeps markdown headings inside a reply intact.
_GUANACO_TURN = re.compile(r'### (Human|Assistant):')

# The fields of one message inside the list a chat map fn reads (named in error messages).
MESSAGE_FIELDS = "'role', 'content'"
SHAREGPT_MESSAGE_FIELDS = "'from', 'value'"

_SHAREGPT_ROLES = {
    'system': 'system',
    'human': 'user', 'user': 'user',
    # glaive tool-call sets: a tool result is shown to the model like a user message,
    # a function call is something the assistant writes and is trained on.
    'observation': 'user',
    'gpt': 'assistant', 'assistant': 'assistant', 'function_call': 'assistant',
}


@register_map_fn(fields=("text ('### Human: ...### Assistant: ...')",))
def oasst1_map_fn(example):
    r"""timdettmers/openassistant-guanaco: ``text`` with ``### Human:`` / ``### Assistant:`` turns.

    Before (openassistant_best_replies_eval.shared318.jsonl, shortened)::

        {'text': '### Human: ¿CUales son las etapas del desarrollo y en qué consisten según
                  Piaget?### Assistant: Jean Piaget fue un psicólogo suizo ...'}

    After::

        {'conversation': [{'system': '', 'input': '¿CUales son las etapas del desarrollo y en
                           qué consisten según Piaget?',
                           'output': 'Jean Piaget fue un psicólogo suizo ...'}]}

    A last ``### Human:`` prompt with no reply is dropped, as in XTuner (it carries no loss).
    A row with no ``### Human:`` marker at all (e.g. the Llama-2-templated guanaco file that sits
    in the same folder) maps to an empty conversation: it is dropped, counted and logged.
    """
    text = require_text(example, 'text', oasst1_map_fn)
    pieces = _GUANACO_TURN.split(text)
    # pieces = [before_first_marker, role, content, role, content, ...]
    turns = [(pieces[i], pieces[i + 1].strip()) for i in range(1, len(pieces), 2)]
    if not turns:
        return {'conversation': []}
    messages = [{'role': 'user' if role == 'Human' else 'assistant', 'content': content}
                for role, content in turns]
    return {'conversation': _pair_messages(messages)}


@register_map_fn(fields=('messages [{role: system|user|assistant, content, loss (optional)}]',))
def openai_map_fn(example):
    """OpenAI chat messages: ``messages`` = [{'role', 'content', 'loss'?}, ...].

    ``role`` is system, user or assistant. An assistant message's optional ``loss`` (bool, or the
    strings 'true'/'false') says whether it is trained; missing or None means trained. Leading
    assistant messages are skipped; consecutive user messages are joined with a newline.

    Before (xtuner_examples/demo_data/multi_turn_2/data.json, shortened)::

        {'messages': [{'role': 'system', 'content': 'You are a helpful assistant.'},
                      {'role': 'user', 'content': 'Give three tips for staying healthy.'},
                      {'role': 'assistant', 'content': '1.Eat a balanced diet ...', 'loss': False},
                      {'role': 'user', 'content': 'How to study English?'},
                      {'role': 'assistant', 'content': '1. Set clear goals ...'}]}

    After::

        {'conversation': [
            {'system': 'You are a helpful assistant.', 'input': 'Give three tips for staying
             healthy.', 'output': '1.Eat a balanced diet ...', 'output_with_loss': False},
            {'system': '', 'input': 'How to study English?', 'output': '1. Set clear goals ...',
             'output_with_loss': True}]}
    """
    messages = require_list(example, 'messages', openai_map_fn)
    normalized = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f'openai_map_fn: message {position} is {type(message).__name__}, '
                            "expected a dict with 'role' and 'content'")
        role = require_text(message, 'role', openai_map_fn, expected=MESSAGE_FIELDS)
        if role not in ('system', 'user', 'assistant'):
            raise DataError(f'openai_map_fn: message {position} has role {role!r}; '
                            "expected 'system', 'user' or 'assistant'")
        content = require_text(message, 'content', openai_map_fn, expected=MESSAGE_FIELDS)
        normalized.append({'role': role, 'content': content,
                           'loss': _as_loss_flag(message.get('loss'), position)})
    return {'conversation': _pair_messages(normalized)}


@register_map_fn(fields=('conversations [{from: human|gpt|system|..., value}]', 'system (optional)'))
def sharegpt_map_fn(example):
    """ShareGPT: ``conversations`` = [{'from', 'value'}, ...], optional top-level ``system``.

    ``from`` is human/user, gpt/assistant or system (glaive's function_call is trained like an
    assistant message, observation is shown like a user message).

    Before (medical/medical_sft_1K_format.jsonl, shortened)::

        {'conversations': [{'from': 'human', 'value': '小孩子偶尔晚上咳嗽 ...'},
                           {'from': 'gpt', 'value': '宝宝咳嗽的原因有很多 ...'}]}

    After::

        {'conversation': [{'system': '', 'input': '小孩子偶尔晚上咳嗽 ...',
                           'output': '宝宝咳嗽的原因有很多 ...'}]}
    """
    return {'conversation': _sharegpt_turns(example, sharegpt_map_fn, _SHAREGPT_ROLES)}


@register_map_fn(fields=('conversations [{from: human|gpt, value}]',))
def wizardlm_map_fn(example):
    """WizardLM evol-instruct (ShareGPT layout, only ``human``/``gpt`` turns).

    Before::

        {'conversations': [{'from': 'human', 'value': 'What is 2 + 2?'},
                           {'from': 'gpt', 'value': '2 + 2 = 4.'}]}

    After::

        {'conversation': [{'system': '', 'input': 'What is 2 + 2?', 'output': '2 + 2 = 4.'}]}
    """
    roles = {'human': 'user', 'gpt': 'assistant'}
    return {'conversation': _sharegpt_turns(example, wizardlm_map_fn, roles)}


def _sharegpt_turns(example, map_fn, roles):
    messages = require_list(example, 'conversations', map_fn)
    system = example.get('system') if isinstance(example.get('system'), str) else ''
    normalized = [{'role': 'system', 'content': system, 'loss': True}] if system else []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f'{map_fn.__name__}: message {position} is {type(message).__name__}, '
                            "expected a dict with 'from' and 'value'")
        speaker = require_text(message, 'from', map_fn, expected=SHAREGPT_MESSAGE_FIELDS)
        if speaker not in roles:
            raise DataError(f'{map_fn.__name__}: message {position} is from {speaker!r}; '
                            f'expected one of {sorted(roles)}')
        normalized.append({'role': roles[speaker],
                           'content': require_text(message, 'value', map_fn,
                                                   expected=SHAREGPT_MESSAGE_FIELDS),
                           'loss': True})
    return _pair_messages(normalized)


def _as_loss_flag(value, position):
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ('true', 'false'):
        return value.lower() == 'true'
    raise DataError(f"openai_map_fn: message {position} has 'loss' = {value!r}; "
                    'expected true or false')


def _pair_messages(messages):
    """Fold role-tagged messages into turns: system and user text, then the assistant reply."""
    turns = []
    system, user_parts = '', []
    for message in messages:
        role, content = message['role'], message['content']
        if role == 'system':
            system = content
        elif role == 'user':
            user_parts.append(content)
        elif user_parts or system:
            turns.append({'system': system, 'input': '\n'.join(user_parts), 'output': content,
                          'output_with_loss': message.get('loss', True)})
            system, user_parts = '', []
        elif turns:
            # Two assistant messages in a row: the second continues the first reply.
            turns[-1] = dict(turns[-1], output=turns[-1]['output'] + '\n' + content)
        # else: an assistant message before any prompt is skipped, as in XTuner.
    # No reply at all (a lone question): [] drops the row, and the pipeline counts it.
    return turns
