"""Plain text for incremental pre-training: every token is trained."""
from xft.registry import register_map_fn

from ._fields import require_text


@register_map_fn(fields=('text',))
def pretrain_map_fn(example):
    r"""Rows with a ``text`` field (``load_dataset('text')``, C4-style JSONL).

    Before (pretrain_text/c4_demo.jsonl, shortened)::

        {'text': 'Beginners BBQ Class Taking Place in Missoula!\nDo you want to get better ...'}

    After::

        {'conversation': [{'system': '', 'input': '',
                           'output': 'Beginners BBQ Class Taking Place in Missoula!\nDo you ...',
                           'need_eos_token': False}]}

    As in XTuner, no EOS is appended (``need_eos_token: False``); the BOS that opens every
    sample marks document boundaries when samples are packed.
    """
    text = require_text(example, 'text', pretrain_map_fn)
    return {'conversation': [{'system': '', 'input': '', 'output': text.strip(),
                              'need_eos_token': False}]}
