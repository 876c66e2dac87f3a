"""Finding, loading and adapting configs: the steps shared by every command that takes one.

``load_config`` is the one loader: a path or a zoo name; ``--cfg-options`` PART 1 variables
applied to the file's text so they reach every dict built from them, the other keys checked
and merged (``xft.engine.cfg_options``); every imported name resolved
(``xft.engine.config_names``). Whatever is wrong with the config is one ConfigError line.
"""
import re
import tempfile
from pathlib import Path

from mmengine.config import Config, DictAction  # noqa: F401  (DictAction re-exported for argparse users)

from xft.engine.cfg_options import check_option_keys, part1_variables, substitute
from xft.engine.config_names import check_config_names
from xft.utils.errors import ConfigError

REPO_CONFIGS = Path(__file__).resolve().parents[2] / 'configs'

# mmengine prefixes errors raised while building an object with where the class lives;
# users want the message itself.
_BUILD_PREFIX = re.compile(r'^(?:class|function) `[\w.]+` in [\w/.\-]+\.py: ')
# A config that inherits (``_base_`` or ``read_base``) takes part of its values from other files.
_INHERITS = re.compile(r'^\s*_base_\s*=|\bread_base\s*\(', re.MULTILINE)


def resolve_config(name_or_path: str) -> Path:
    """A config path, or the path of the config zoo entry with that bare name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[:-3] if path.name.endswith('.py') else path.name
    matches = sorted(REPO_CONFIGS.rglob(f'{stem}.py')) if REPO_CONFIGS.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f'{name_or_path}: several configs have this name: {", ".join(map(str, matches))}')
    raise ConfigError(f'{name_or_path}: no such config file, and no config of that name in {REPO_CONFIGS} '
                      '(see `xft list-cfg`)')


def load_config(name_or_path: str, cfg_options: dict = None) -> Config:
    """The config every command loads: a path or a zoo name, with ``--cfg-options`` applied.

    A config is Python, so any error raised while it runs is the user's: it becomes one
    ConfigError line naming the file.
    """
    path = resolve_config(name_or_path)
    options = dict(cfg_options or {})
    source = path.read_text(encoding='utf-8') if path.suffix == '.py' else ''
    variables = _part1_variables(path, source)
    overrides = {key: options.pop(key) for key in list(options) if key in variables}
    if overrides and _INHERITS.search(source):
        _refuse_inherited_override(path, overrides)
    cfg = _parse(path, source, overrides)
    try:
        check_config_names(cfg, path, source)
    except ConfigError as error:
        raise ConfigError(f'{error}{_override_note(overrides)}') from None
    check_option_keys(cfg, options)
    if options:
        cfg.merge_from_dict(options)
    return cfg


def _part1_variables(path, source):
    if not source:
        return {}
    try:
        return part1_variables(source)
    except SyntaxError as error:
        raise ConfigError(f'{path} line {error.lineno}: {error.msg}') from None


def _override_note(overrides: dict) -> str:
    if not overrides:
        return ''
    return f' (after --cfg-options {" ".join(f"{k}={v!r}" for k, v in overrides.items())})'


def _parse(path: Path, source: str, overrides: dict) -> Config:
    if not overrides:
        return _fromfile(path, path)
    note = _override_note(overrides)
    with tempfile.TemporaryDirectory(prefix='xft_config_') as folder:
        copy = Path(folder) / path.name  # same name: the Runner names its run and dump after it
        copy.write_text(substitute(source, overrides), encoding='utf-8')
        cfg = _fromfile(copy, path, note)
    # The config still comes from the user's file (its dump holds the overridden values).
    super(Config, cfg).__setattr__('_filename', str(path))
    return cfg


def _fromfile(file: Path, shown: Path, note: str = '') -> Config:
    try:
        return Config.fromfile(str(file))
    except SyntaxError as error:
        raise ConfigError(f'{shown} line {error.lineno}: {error.msg}{note}') from None
    except Exception as error:  # ImportError, NameError, a failing call in the config ...
        message = str(error).replace(str(file), str(shown)).strip().splitlines() or ['']
        raise ConfigError(f'{shown}: {type(error).__name__}: {message[0]}{note}') from None


def _refuse_inherited_override(path, overrides):
    """An inheriting config's variables may live in another file: say which keys to set."""
    cfg = _fromfile(path, path)
    hints = []
    for name in overrides:
        value = cfg.get(name)
        keys = [key for key in _keys_holding(cfg._cfg_dict, value) if key != name]
        if keys:
            hints.append(f'{name} reaches {", ".join(keys)}')
    raise ConfigError(f'{path} inherits from other files (_base_ / read_base), so a PART 1 '
                      f'variable set by --cfg-options cannot reach the dicts built from it; set '
                      f'their keys instead' + (f' ({"; ".join(hints)})' if hints else ''))


def _keys_holding(node, value, prefix=''):
    """Dotted keys under ``node`` whose value equals ``value``."""
    if isinstance(node, dict):
        for key, child in dict.items(node):
            yield from _keys_holding(child, value, f'{prefix}{key}.')
    elif isinstance(node, (list, tuple)):
        for index, child in enumerate(node):
            yield from _keys_holding(child, value, f'{prefix}{index}.')
    elif type(node) is type(value) and node == value:
        yield prefix[:-1]


def user_message(error: Exception) -> str:
    """The one line to print for a user error, without mmengine's build-location prefixes."""
    message = str(error).strip()
    while _BUILD_PREFIX.match(message):
        message = _BUILD_PREFIX.sub('', message, count=1)
    return message.splitlines()[0] if message else type(error).__name__
