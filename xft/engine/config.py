"""Finding, loading and adapting configs: the steps shared by every command that takes one."""
import re
from pathlib import Path

from mmengine.config import Config, DictAction  # noqa: F401  (DictAction re-exported for argparse users)

from xft.utils.errors import ConfigError

REPO_CONFIGS = Path(__file__).resolve().parents[2] / 'configs'

# mmengine prefixes errors raised while building an object with where the class lives;
# users want the message itself.
_BUILD_PREFIX = re.compile(r'^(?:class|function) `[\w.]+` in [\w/.\-]+\.py: ')


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
    """The config every command loads: a path or a zoo name, with ``--cfg-options`` merged.

    A config is Python, so any error raised while it runs is the user's: it becomes one
    ConfigError line naming the file.
    """
    path = resolve_config(name_or_path)
    try:
        cfg = Config.fromfile(str(path))
    except SyntaxError as error:
        raise ConfigError(f'{path} line {error.lineno}: {error.msg}') from None
    except Exception as error:  # ImportError, NameError, a failing call in the config ...
        raise ConfigError(f'{path}: {type(error).__name__}: {error}') from None
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def user_message(error: Exception) -> str:
    """The one line to print for a user error, without mmengine's build-location prefixes."""
    message = str(error).strip()
    while _BUILD_PREFIX.match(message):
        message = _BUILD_PREFIX.sub('', message, count=1)
    return message.splitlines()[0] if message else type(error).__name__

