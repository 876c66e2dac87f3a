"""Data files shipped inside the xft package (see README.md in this folder).

* ``self_cognition_lumi.json``: hand-written identity pairs (English and Chinese) that name the
  assistant "Lumi", made by "the xft team".
* ``general_replay_smollm2.json``: SmolLM2-135M-Instruct's own greedy answers to varied general
  prompts, mixed in so that an identity fine-tune keeps its general answers.

Both are in xft's conversation format, ``[{"conversation": [{"input": ..., "output": ...}]}]``.
"""
from pathlib import Path

from xft.utils.errors import UserError

DATA_DIR = Path(__file__).resolve().parent
SELF_COGNITION_FILE = 'self_cognition_lumi.json'
GENERAL_REPLAY_FILE = 'general_replay_smollm2.json'


def data_file(name):
    """Absolute path of the shipped data file ``name``, as a string-friendly ``Path``.

    >>> data_file('self_cognition_lumi.json').name
    'self_cognition_lumi.json'
    """
    path = DATA_DIR / name
    if not path.is_file():
        shipped = sorted(p.name for p in DATA_DIR.glob('*.json'))
        raise UserError(f'xft ships no data file {name!r}; shipped: {", ".join(shipped)}')
    return path


def demo_data_files():
    """The self-cognition demo's training files, as strings a config can hold.

    >>> [Path(p).name for p in demo_data_files()]
    ['self_cognition_lumi.json', 'general_replay_smollm2.json']
    """
    return [str(data_file(name)) for name in (SELF_COGNITION_FILE, GENERAL_REPLAY_FILE)]


__all__ = ['DATA_DIR', 'GENERAL_REPLAY_FILE', 'SELF_COGNITION_FILE', 'data_file',
           'demo_data_files']
