"""Every name a config imports or reads from an import resolves, checked when the config loads.

mmengine parses a config that imports modules lazily: ``prompt_template = PROMPT_TEMPLATE.chatmll``
becomes a placeholder that fails only when a Runner builds the object using it, minutes later,
as ``ImportError: Failed to import xft.utils.PROMPT_TEMPLATE.chatmll in None``. Resolving each
placeholder here turns such a typo into one line naming the file, the line and the closest
names: ``cfg.py line 42: PROMPT_TEMPLATE has no 'chatmll'; did you mean 'chatml'?``.
"""
import importlib
import re
from collections.abc import Mapping

from mmengine.config.lazy import LazyAttr, LazyObject

from xft.utils.errors import ConfigError, did_you_mean


def check_config_names(cfg, path, source: str) -> None:
    """Raise ConfigError for the first imported name in ``cfg`` that does not resolve."""
    for value in _lazy_values(cfg._cfg_dict):
        try:
            value.build()
        except Exception as error:  # ImportError, AttributeError, or any error the import raised
            raise ConfigError(_describe_failure(value, error, path, source)) from None


def _lazy_values(node):
    """The LazyObject/LazyAttr placeholders in a config's raw (unbuilt) dicts and lists."""
    if isinstance(node, (LazyObject, LazyAttr)):
        yield node
    elif isinstance(node, dict):
        for value in dict.values(node):
            yield from _lazy_values(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _lazy_values(value)


def _describe_failure(value, error, path, source) -> str:
    if isinstance(value, LazyAttr):
        try:
            owner = value.source.build()
        except Exception as source_error:  # the owner itself does not resolve
            return _describe_failure(value.source, source_error, path, source)
        if not hasattr(owner, value.name):
            where = _line_of(source, rf'\.{re.escape(value.name)}\b')
            return (f'{path}{where}: {value.source} has no {value.name!r}'
                    f'{did_you_mean(value.name, _names_of(owner))}')
    elif isinstance(value, LazyObject) and isinstance(value._module, str) and value._imported:
        try:
            module = importlib.import_module(value._module)
        except Exception as import_error:
            return f'{path}: cannot import {value._module} ({type(import_error).__name__}: {import_error})'
        if not hasattr(module, value._imported):
            where = _line_of(source, rf'\bimport\b[^\n]*\b{re.escape(value._imported)}\b')
            return (f'{path}{where}: {value._module} has no {value._imported!r}'
                    f'{did_you_mean(value._imported, _names_of(module))}')
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f'{path}: {type(error).__name__}: {reason}'


def _names_of(owner) -> list:
    names = [name for name in dir(owner) if not name.startswith('_')]
    if isinstance(owner, Mapping):
        names = [str(key) for key in owner.keys()] + names
    return names


def _line_of(source: str, pattern: str) -> str:
    """' line N' of the first match of ``pattern`` in the config's text, or ''."""
    found = re.search(pattern, source or '')
    return f' line {source.count(chr(10), 0, found.start()) + 1}' if found else ''
