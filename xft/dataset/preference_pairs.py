"""A preference row becomes two conversations, then one encoded pair.

The map step gives XTuner's preference format (``map_fns/preference.py``): a ``prompt`` of chat
messages ending with a user turn, and a ``chosen`` and a ``rejected`` answer to it. Here it
becomes two conversations in xft's format (``conversation.py``) that differ only in the last
reply: earlier assistant turns of the prompt are context (``output_with_loss=False``), the last
reply is the answer. From there the SFT steps apply unchanged: the template step wraps each
turn, the encode step (``encode.py``) gives ids and labels, so a preference pair is encoded
exactly as an SFT sample with the same answer would be.

An encoded pair is one row: the chosen sequence then the rejected one,

    {'input_ids': chosen_ids + rejected_ids, 'labels': chosen_labels + rejected_labels,
     'cumulative_len': [0, len(chosen_ids), len(chosen_ids) + len(rejected_ids)], 'length': ...}

DPO and ORPO train on the answer tokens (answer, template SUFFIX, EOS). A reward model reads
one score per sequence: at the ``reward_token_id`` appended to it, or without one at the
answer's last trained token; that position alone carries a label. The first token of
every sequence is never labelled, so packed sequences never predict across a boundary.
"""
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import DataError

from .conversation import normalize_conversation
from .encode import ENCODED_COLUMNS

PREFERENCE_FIELDS = ('prompt', 'chosen', 'rejected')
ROLES = ('system', 'user', 'assistant')
# Columns of an encoded pair (the counts are read once for the log, then dropped).
PAIR_COLUMNS = ('input_ids', 'labels', 'cumulative_len', 'length', 'num_trained_chosen',
                'num_trained_rejected', 'num_truncated_tokens')


def _fields_error(row, key):
    present = ', '.join(repr(k) for k in row) if isinstance(row, dict) else type(row).__name__
    return DataError(f"expected a preference row with fields 'prompt' (chat messages ending "
                     f"with a user turn), 'chosen' and 'rejected' (the two answers), or a "
                     f'dataset_map_fn such as sharegpt_preference_map_fn; field {key!r} is '
                     f'missing (row has {present})')


def _messages(value, key):
    """A field's chat messages as [(role, content)], from a list, one message or a string."""
    if isinstance(value, str):
        return [('assistant', value)]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise DataError(f'{key!r} is {type(value).__name__}, expected a list of chat messages')
    messages = []
    for position, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(f'{key!r} message {position} is {type(message).__name__}, expected '
                            "{'role': ..., 'content': ...}")
        role, content = message.get('role'), message.get('content')
        if role not in ROLES:
            raise DataError(f'{key!r} message {position} has role {role!r}; expected one of '
                            f'{", ".join(ROLES)}')
        if not isinstance(content, str):
            raise DataError(f"{key!r} message {position} has no text 'content'")
        messages.append((role, content))
    return messages


def _answer(row, key):
    messages = _messages(row[key], key)
    roles = {role for role, _ in messages}
    if roles - {'assistant'}:
        raise DataError(f'the {key!r} answer holds a {sorted(roles - {"assistant"})[0]!r} message; '
                        'expected only the assistant reply')
    text = '\n'.join(content for _, content in messages)
    if not text.strip():
        raise DataError(f'the {key!r} answer is empty')
    return text


def _prompt_turns(messages):
    """Fold the prompt's messages into context turns and the last, unanswered user turn."""
    if not messages:
        raise DataError("the 'prompt' has no messages")
    if messages[-1][0] != 'user':
        raise DataError(f"the conversation does not end with a user turn (its last message is "
                        f"from {messages[-1][0]!r}); the answers must reply to a user")
    turns, system, user = [], '', []
    for role, content in messages:
        if role == 'system':
            system = content
        elif role == 'user':
            user.append(content)
        elif user or system:
            turns.append({'system': system, 'input': '\n'.join(user), 'output': content,
                          'output_with_loss': False})
            system, user = '', []
        elif turns:  # two assistant messages in a row: one reply
            turns[-1] = dict(turns[-1], output=turns[-1]['output'] + '\n' + content)
        # else: an assistant message before any prompt is skipped, as for SFT.
    return turns, {'system': system, 'input': '\n'.join(user)}


def pair_conversations(row, origin):
    """(chosen, rejected) conversations of one preference row; DataError naming ``origin``."""
    try:
        for key in PREFERENCE_FIELDS:
            if not isinstance(row, dict) or row.get(key) is None:
                raise _fields_error(row, key)
        chosen, rejected = _answer(row, 'chosen'), _answer(row, 'rejected')
        context, last = _prompt_turns(_messages(row['prompt'], 'prompt'))
    except DataError as error:
        raise DataError(f'{origin}: {error}') from None
    return tuple(normalize_conversation(context + [dict(last, output=answer)], origin, False)
                 for answer in (chosen, rejected))


def finish_pair(chosen, rejected, reward=False, reward_token_id=-1, max_length=None):
    """One pair row from two encoded sequences (``encode.py``'s columns).

    ``reward``: only one position per sequence keeps a label, the one a reward model reads.
    With ``reward_token_id`` >= 0 that token is appended (the sequence first cut to
    ``max_length - 1`` when needed); with -1 it is the answer's last trained token (the
    template's SUFFIX or the EOS), and later tokens (a SEP) are not seen from there.
    """
    sequences, truncated = [], chosen['num_truncated_tokens'] + rejected['num_truncated_tokens']
    trained = []
    for encoded in (chosen, rejected):
        ids, labels = list(encoded['input_ids']), list(encoded['labels'])
        labels[0] = IGNORE_INDEX  # nothing in this sequence predicts its first token
        appended = reward and reward_token_id >= 0
        if appended and len(ids) >= max_length:
            truncated += len(ids) - max_length + 1
            ids, labels = ids[:max_length - 1], labels[:max_length - 1]
        # Answer tokens left after truncation: a pair whose answer is gone is dropped.
        trained.append(sum(label != IGNORE_INDEX for label in labels))
        if appended:
            ids, labels = ids + [reward_token_id], [IGNORE_INDEX] * len(ids) + [reward_token_id]
        elif reward:
            last = max((i for i, label in enumerate(labels) if label != IGNORE_INDEX), default=None)
            labels = [label if i == last else IGNORE_INDEX for i, label in enumerate(labels)]
        sequences.append((ids, labels))
    (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = sequences
    return {'input_ids': chosen_ids + rejected_ids, 'labels': chosen_labels + rejected_labels,
            'cumulative_len': [0, len(chosen_ids), len(chosen_ids) + len(rejected_ids)],
            'length': len(chosen_ids) + len(rejected_ids), 'num_trained_chosen': trained[0],
            'num_trained_rejected': trained[1], 'num_truncated_tokens': truncated}


def split_encoded(batch_encoded):
    """Encoded columns of 2n conversations (chosen, rejected alternating) -> n (chosen,
    rejected) pairs of per-sequence dicts."""
    count = len(batch_encoded['input_ids'])
    rows = [{column: batch_encoded[column][i] for column in ENCODED_COLUMNS} for i in range(count)]
    return list(zip(rows[0::2], rows[1::2]))
