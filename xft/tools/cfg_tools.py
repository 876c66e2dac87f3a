"""``xft list-cfg [-p PATTERN]`` and ``xft copy-cfg NAME DIR``: find a config, take a copy.

The zoo lives in ``configs/`` (folders per family); a config is named by its file name without
``.py``, e.g. ``llama2_7b_chat_qlora_alpaca_e3``, everywhere a command takes one.
"""
import argparse
import shutil
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


def copy_config(name, save_dir) -> Path:
    """Copy the config ``name`` (a bare name or a path) into ``save_dir`` as ``<name>_copy.py``.

    The ``_copy`` suffix (XTuner's) keeps the bare name pointing at the zoo's original, so
    ``xft train <name>_copy.py`` is always your edited file.
    """
    source = resolve_config(name)
    save_dir = Path(save_dir)
    if save_dir.exists() and not save_dir.is_dir():
        raise UserError(f'{save_dir}: not a folder')
    save_dir.mkdir(parents=True, exist_ok=True)
    target = save_dir / f'{source.stem}{COPY_SUFFIX}.py'
    shutil.copyfile(source, target)
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
