"""The conversation format every dataset meets, and its validation.

A conversation is a list of turns. After a map fn each turn is normalized to exactly::

    {'system': str, 'input': str, 'output': str,
     'output_with_loss': bool,        # False: this reply is shown but not trained
     'need_eos_token': bool | None,   # None: let the template decide (SUFFIX_AS_EOS)
     'sep': str}                      # filled in by the template step

One fixed schema keeps Arrow happy (every row has the same struct) and means the later steps
never guess which keys exist.
"""
import datasets

from xft.utils.errors import DataError

TURN_FIELDS = ('system', 'input', 'output', 'output_with_loss', 'need_eos_token', 'sep')
_TEXT_FIELDS = ('system', 'input', 'output')
# The Arrow type of the ``conversation`` column; given to datasets.map so that a batch of empty
# conversations or all-None flags does not fix a narrower type.
CONVERSATION_FEATURE = datasets.List({
    'system': datasets.Value('string'), 'input': datasets.Value('string'),
    'output': datasets.Value('string'), 'output_with_loss': datasets.Value('bool'),
    'need_eos_token': datasets.Value('bool'), 'sep': datasets.Value('string')})


def with_conversation_feature(features, removed=()):
    """``features`` without the ``removed`` columns, plus the ``conversation`` column."""
    kept = {name: feature for name, feature in features.items() if name not in removed}
    kept['conversation'] = CONVERSATION_FEATURE
    return datasets.Features(kept)


def normalize_conversation(conversation, source, allow_empty):
    """Return a new list of turns in the fixed schema; raise DataError naming ``source``.

    ``allow_empty``: a map fn may return [] on purpose (Alpaca's ``<nooutput>``), which drops the
    row; a user's own ``conversation`` column may not be empty.
    """
    if not isinstance(conversation, list):
        raise DataError(f"{source}: 'conversation' is {type(conversation).__name__}, "
                        'expected a list of turns')
    if not conversation and not allow_empty:
        raise DataError(f"{source}: 'conversation' is empty")
    return [_normalize_turn(turn, position, source) for position, turn in enumerate(conversation)]


def _normalize_turn(turn, position, source):
    if not isinstance(turn, dict):
        raise DataError(f'{source}: turn {position} is {type(turn).__name__}, '
                        "expected a dict with 'input' and 'output'")
    normalized = {}
    for key in _TEXT_FIELDS:
        value = turn.get(key)
        if value is None:
            value = ''
        if not isinstance(value, str):
            raise DataError(f'{source}: turn {position} field {key!r} is '
                            f'{type(value).__name__}, expected a string')
        normalized[key] = value
    if 'output' not in turn or turn['output'] is None:
        raise DataError(f"{source}: turn {position} has no 'output' (turns need 'input' and "
                        "'output'; 'system' is optional)")
    with_loss = turn.get('output_with_loss')
    normalized['output_with_loss'] = True if with_loss is None else bool(with_loss)
    need_eos = turn.get('need_eos_token')
    normalized['need_eos_token'] = None if need_eos is None else bool(need_eos)
    sep = turn.get('sep')
    normalized['sep'] = sep if isinstance(sep, str) else ''
    return normalized
