"""The options of ``process_hf_dataset``, declared once.

``PipelineOptions`` is the one list: its fields are ``process_hf_dataset``'s keywords (XTuner
0.1.x's names), building one checks them (one ConfigError line per bad option) and builds what a
config gives as dicts or names, and ``cache_key`` hashes the fields that shape the processed
rows. ``process_hf_dataset``'s signature is made from the fields, so help() shows them too.
"""
import hashlib
import inspect
import json
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Optional

import datasets
from mmengine.utils.misc import get_object_from_string

from xft.registry import MAP_FUNC, build_nested
from xft.utils.errors import ConfigError

from .map_fns.template import TemplateMapFn

# Bump when the processed format changes, so old caches are not reused.
PROCESSED_FORMAT_VERSION = 1
# Field metadata: False for an option that does not change the processed rows.
SHAPES_ROWS = 'shapes_rows'


@dataclass
class PipelineOptions:
    """The checked arguments of ``process_hf_dataset`` (the dataset itself and ``cache_dir`` aside).

    Attributes:
        tokenizer: a tokenizer or a config dict building one (with pre-tokenized rows it may be
            None; given, the rows' ids are checked against its vocabulary).
        max_length: longest sample (longer ones are truncated and counted); also the packed
            row length. May be None for pre-tokenized rows that are not packed (kept whole).
        dataset_map_fn: raw row -> ``{'conversation': [...]}``; a function, a MAP_FUNC name or a
            dotted path. None: rows already hold a ``conversation`` column.
        template_map_fn: usually ``dict(type=template_map_fn_factory, template=...)``. None: the
            turns are encoded as they are (system text, if any, goes before the input).
        max_dataset_length: keep this many rows, chosen at random (seeded) before mapping.
        split: the split to take from a DatasetDict or a ``data_files`` dict.
        remove_unused_columns: drop the raw columns (packed rows never keep them).
        rename_maps: [(old, new), ...] column renames applied after the template step.
        shuffle_before_pack: shuffle samples (seeded) before packing.
        pack_to_max_length: pack samples into rows of ``max_length`` tokens.
        use_varlen_attn: XTuner's flag; xft keeps packed samples apart with any attention
            implementation, so this only checks that packing is on.
        input_ids_with_output: False encodes prompts only (evaluation).
        do_dataset_tokenization: False takes rows that already hold ``input_ids`` (and, where
            given, ``labels``; without them every token trains), as XTuner's pre-tokenized
            pg_books configs do: no map fn, template or tokenizer call.
        with_image_token: multimodal; not supported.
        map_num_proc: processes for the map and encode steps (capped at the CPU count).
        seed: seed for ``max_dataset_length`` sampling and the shuffle before packing.
    """
    tokenizer: object = None
    max_length: Optional[int] = None
    dataset_map_fn: object = None
    template_map_fn: object = None
    max_dataset_length: Optional[int] = None
    split: str = 'train'
    remove_unused_columns: bool = False
    rename_maps: list = field(default_factory=list)
    shuffle_before_pack: bool = True
    pack_to_max_length: bool = True
    use_varlen_attn: bool = field(default=False, metadata={SHAPES_ROWS: False})
    input_ids_with_output: bool = True
    do_dataset_tokenization: bool = True
    with_image_token: bool = field(default=False, metadata={SHAPES_ROWS: False})
    map_num_proc: int = field(default=32, metadata={SHAPES_ROWS: False})
    seed: int = 0

    def __post_init__(self):
        self._check_interactions()
        self.tokenizer = None if self.tokenizer is None else build_tokenizer(self.tokenizer)
        self.dataset_map_fn = resolve_map_fn(self.dataset_map_fn)
        self.template_map_fn = resolve_template_map_fn(self.template_map_fn)
        self.remove_unused_columns = bool(self.remove_unused_columns)
        self.rename_maps = list(self.rename_maps or [])
        self.shuffle_before_pack = bool(self.shuffle_before_pack)
        self.pack_to_max_length = bool(self.pack_to_max_length)
        self.input_ids_with_output = bool(self.input_ids_with_output)
        self.map_num_proc = max(1, min(int(self.map_num_proc or 1), os.cpu_count() or 1))
        self.seed = int(self.seed)

    def _check_interactions(self):
        self.do_dataset_tokenization = bool(self.do_dataset_tokenization)
        if self.do_dataset_tokenization:
            missing = [name for name in ('tokenizer', 'max_length') if getattr(self, name) is None]
            if missing:
                raise ConfigError(f'process_hf_dataset needs {" and ".join(missing)}')
        elif self.dataset_map_fn is not None or self.template_map_fn is not None:
            raise ConfigError('do_dataset_tokenization=False takes rows that already hold input_ids: '
                              'leave dataset_map_fn and template_map_fn out (they map raw text)')
        max_length = self.max_length
        if max_length is None and self.pack_to_max_length:
            raise ConfigError('pack_to_max_length=True needs max_length (the packed row length)')
        if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool)
                                       or max_length < 1):
            raise ConfigError(f'max_length must be a positive integer, got {max_length!r}')
        if self.use_varlen_attn and not self.pack_to_max_length:
            raise ConfigError('use_varlen_attn=True needs pack_to_max_length=True')
        if self.pack_to_max_length and not self.input_ids_with_output:
            raise ConfigError('pack_to_max_length=True packs training samples; it cannot be used '
                              'with input_ids_with_output=False')
        if self.with_image_token:
            raise ConfigError('with_image_token=True (multimodal data) is not supported by xft')
        limit = self.max_dataset_length
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ConfigError(f'max_dataset_length must be a positive integer or None, got '
                              f'{limit!r}')

    @classmethod
    def from_arguments(cls, *args, **kwargs):
        """Build from ``process_hf_dataset``'s arguments; an unknown or missing one is one line
        (the missing ones in ``_check_interactions``: what is needed depends on the others)."""
        known = [option.name for option in fields(cls)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ConfigError(f'process_hf_dataset got unknown arguments: {", ".join(unknown)}')
        return cls(*args, **kwargs)

    def cache_key(self, dataset) -> str:
        """A hash of everything the processed rows of ``dataset`` depend on."""
        parts = {'format': PROCESSED_FORMAT_VERSION, 'source': _describe_source(dataset)}
        for option in fields(self):
            if option.metadata.get(SHAPES_ROWS, True):
                parts[option.name] = _describe_value(getattr(self, option.name))
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def options_signature(leading=(), trailing=()) -> inspect.Signature:
    """A signature listing ``leading`` parameters, every option, then ``trailing`` ones."""
    options = [inspect.Parameter(
        option.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=inspect.Parameter.empty if option.default is MISSING and
        option.default_factory is MISSING else
        (option.default if option.default is not MISSING else option.default_factory()))
        for option in fields(PipelineOptions)]
    return inspect.Signature([*leading, *options, *trailing])


def build_tokenizer(tokenizer):
    if isinstance(tokenizer, dict):
        try:
            tokenizer = build_nested(tokenizer)
        except (OSError, ValueError) as error:  # not found offline, not a tokenizer folder
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f'cannot build the tokenizer '
                              f'{tokenizer.get("pretrained_model_name_or_path", "")!r}: '
                              f'{reason}') from None
    if not callable(tokenizer) or not hasattr(tokenizer, 'eos_token_id'):
        raise ConfigError(f'tokenizer must be a Hugging Face tokenizer, got '
                          f'{type(tokenizer).__name__}')
    return tokenizer


def resolve_map_fn(map_fn):
    if map_fn is None or callable(map_fn) and not isinstance(map_fn, dict):
        return map_fn
    if isinstance(map_fn, dict):
        return build_nested(map_fn)
    if isinstance(map_fn, str):
        found = MAP_FUNC.get(map_fn) or (get_object_from_string(map_fn) if '.' in map_fn
                                         else None)
        if found is None:
            raise ConfigError(f'unknown dataset_map_fn {map_fn!r}; registered: '
                              f'{", ".join(sorted(MAP_FUNC.module_dict))}')
        return found
    raise ConfigError(f'dataset_map_fn must be a function or a name, got {type(map_fn).__name__}')


def resolve_template_map_fn(template_map_fn):
    if template_map_fn is None or isinstance(template_map_fn, TemplateMapFn):
        return template_map_fn
    if isinstance(template_map_fn, dict):
        return build_nested(template_map_fn)
    if callable(template_map_fn):
        return template_map_fn
    raise ConfigError(f'template_map_fn must be a function or a config dict, got '
                      f'{type(template_map_fn).__name__}')


def _describe_value(value):
    """What of an option value the cache key holds: a tokenizer's identity, a template's text,
    a function's ``module:qualname``, or the value itself."""
    if hasattr(value, 'eos_token_id') and callable(value):
        return [getattr(value, 'name_or_path', ''), len(value), value.bos_token_id,
                value.eos_token_id, getattr(value, 'chat_template', None) or '']
    if getattr(value, 'template', None) is not None:
        return repr(value.template)
    if callable(value):
        return f'{getattr(value, "__module__", "")}:{getattr(value, "__qualname__", repr(value))}'
    return value


def _describe_source(dataset):
    if isinstance(dataset, (datasets.Dataset, datasets.DatasetDict)):
        return getattr(dataset, '_fingerprint', None) or repr(dataset)
    if isinstance(dataset, (str, Path)) and Path(dataset).exists():
        path = Path(dataset)
        files = sorted(p for p in path.rglob('*') if p.is_file()) if path.is_dir() else [path]
        return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    if isinstance(dataset, (list, tuple)):
        return [_describe_source(item) for item in dataset]
    if isinstance(dataset, dict):
        return {key: (_describe_value(value) if callable(value) else _describe_source(value))
                for key, value in dataset.items()}
    return repr(dataset)
