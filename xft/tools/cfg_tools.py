"""``xft list-cfg [-p PATTERN]`` and ``xft copy-cfg NAME DIR``: find a config, take a copy.

The zoo lives in ``configs/`` (folders per family); a config is named by its file name without
``.py``, e.g. ``llama2_7b_chat_qlora_alpaca_e3``, everywhere a command takes one.
"""
import argparse
import re
import shlex
import sys
from pathlib import Path

from xft.engine.config import REPO_CONFIGS, resolve_config
from xft.utils.errors import UserError

COPY_SUFFIX = '_copy'


def list_configs(pattern=None, root=REPO_CONFIGS) -> list:
    """Sorted config names containing every word of ``pattern`` (case-insensitive).

    >>> list_configs('qwen2_5 lora')[:2]
    ['qwen2_5_0_5b_instruct_lora_alpaca_e3', 'qwen2_5_0_5b_instruct_qlora_alpaca_e3']
    """
    words = (pattern or '').lower().split()
    names = sorted(path.stem for path in Path(root).rglob('*.py') if not path.name.startswith('_'))
    return [name for name in names if all(word in name.lower() for word in words)]


# A header line that runs or copies the config it sits in, e.g. `#   NPROC_PER_NODE=8 xft train NAME`.
_RUN_LINE = re.compile(r'^#\s+(?:[A-Z_]+=\S+\s+)*(?:xft (?:train|copy-cfg)|python tools/train\.py)\s')
# The zoo's notes for maintainers (how the file is generated) name the generator.
_MAINTAINER_NOTE = 'xft.tools.gen_configs'


def split_header(text: str) -> tuple:
    """(the leading comment lines, the rest) of a config's text."""
    lines = text.splitlines(keepends=True)
    end = next((i for i, line in enumerate(lines) if not line.startswith('#')), len(lines))
    return lines[:end], ''.join(lines[end:])


def copy_header(header: list, original: str, copy: Path) -> str:
    """The header of a copy: the original's first paragraph (what it trains) and its other
    notes, then how to train the copy. Paragraphs that run or copy the original, and the
    zoo's notes for maintainers, are left out.

    >>> print(copy_header(['# LoRA on alpaca.\\n', '#\\n', '#   xft train zoo_e3\\n'], 'zoo_e3',
    ...                   Path('mine/zoo_e3_copy.py')), end='')
    # LoRA on alpaca.
    #
    # Copied from zoo_e3 by `xft copy-cfg`.
    # Edit PART 1, then train this copy:
    #   xft train mine/zoo_e3_copy.py
    # on 8 GPUs of one machine:
    #   NPROC_PER_NODE=8 xft train mine/zoo_e3_copy.py
    """
    paragraphs, current = [], []
    for line in header:
        if line.strip() == '#':
            paragraphs.append(current)
            current = []
        else:
            current.append(line)
    paragraphs.append(current)
    kept = [p for p in paragraphs
            if p and not any(_RUN_LINE.match(line) or _MAINTAINER_NOTE in line for line in p)]
    path = shlex.quote(str(copy))
    run = [f'# Copied from {original} by `xft copy-cfg`.\n',
           '# Edit PART 1, then train this copy:\n',
           f'#   xft train {path}\n',
           '# on 8 GPUs of one machine:\n',
           f'#   NPROC_PER_NODE=8 xft train {path}\n']
    return '#\n'.join(''.join(p) for p in kept[:1] + [run] + kept[1:])


def copy_config(name, save_dir) -> Path:
    """Copy the config ``name`` (a bare name or a path) into ``save_dir`` as ``<name>_copy.py``.

    The ``_copy`` suffix (XTuner's) keeps the bare name pointing at the zoo's original, so
    ``xft train <dir>/<name>_copy.py`` is always your edited file; the copy's header says so.
    """
    source = resolve_config(name)
    save_dir = Path(save_dir)
    if save_dir.exists() and not save_dir.is_dir():
        raise UserError(f'{save_dir}: not a folder')
    save_dir.mkdir(parents=True, exist_ok=True)
    target = save_dir / f'{source.stem}{COPY_SUFFIX}.py'
    header, rest = split_header(source.read_text(encoding='utf-8'))
    text = copy_header(header, source.stem, target) + rest
    # A copy is there to be edited: writing over one would lose those edits without a word.
    if target.exists() and target.read_text(encoding='utf-8') != text:
        raise UserError(f'{target}: a copy is already there and differs from {source.stem} (your edits?); '
                        'left as it is. Move it away, or copy into another folder')
    target.write_text(text, encoding='utf-8')
    return target


def list_cfg_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='xft list-cfg', description='List the configs of the zoo.')
    parser.add_argument('-p', '--pattern', nargs='+', default=[],
                        help='only names containing all these words, e.g. -p llama3 qlora')
    args = parser.parse_args(argv)
    pattern = ' '.join(args.pattern)
    names = list_configs(pattern)
    if not names:
        print(f'xft list-cfg: no config name contains {pattern!r}', file=sys.stderr)
        return 1
    print('\n'.join(names))
    return 0


def copy_cfg_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='xft copy-cfg', description='Copy a zoo config into a folder as NAME_copy.py, to edit.')
    parser.add_argument('config', help='a config name from `xft list-cfg`, or a path')
    parser.add_argument('save_dir', help='the folder to copy into (created if missing)')
    args = parser.parse_args(argv)
    try:
        target = copy_config(args.config, args.save_dir)
    except UserError as error:
        print(f'xft copy-cfg: {error}', file=sys.stderr)
        return 2
    print(f'Copied to {target}')
    return 0
