"""``process_hf_dataset``: load -> map -> template -> encode -> filter -> pack.

Each step is one function below; ``run_pipeline`` runs them in order and counts what each one
dropped or cut, and ``process_hf_dataset`` (XTuner's name and arguments) validates the options
once, runs the pipeline, logs the counts, and can save the result to ``cache_dir`` and load it
back next time without reprocessing.
"""
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
from mmengine.logging import print_log
from mmengine.utils.misc import get_object_from_string

from xft.registry import MAP_FUNC, build_nested
from xft.utils.errors import ConfigError, DataError

from .conversation import normalize_conversation, with_conversation_feature
from .encode import encode_batch, encode_with_chat_template
from .load import load_source
from .map_fns.template import TemplateMapFn
from .packing import pack_dataset

# Bump when the processed format changes, so old caches are not reused.
PROCESSED_FORMAT_VERSION = 1
CACHE_META_FILE = 'xft_processed.json'
ENCODE_BATCH_SIZE = 1000
# Below this many rows per worker, extra map processes cost more than they save (bench_preprocess:
# 2808 alpaca rows took 2.9x longer on 2 processes than on 1 on a 2-core machine).
MIN_ROWS_PER_PROCESS = 5000


@dataclass
class PipelineStats:
    """What each step did; logged after processing and shown by ``xft check-custom-dataset``."""
    rows_loaded: int = 0
    rows_dropped_by_map_fn: int = 0
    samples_truncated: int = 0
    tokens_truncated: int = 0
    samples_without_loss: int = 0
    samples_kept: int = 0
    tokens_kept: int = 0
    trained_tokens: int = 0
    packed_rows: int = 0
    max_length: int = 0
    first_dropped_row: str = ''

    def summary(self):
        dropped = f' (the first: {self.first_dropped_row})' if self.first_dropped_row else ''
        text = (f'{self.rows_loaded} rows loaded; {self.rows_dropped_by_map_fn} dropped by the '
                f'map fn (empty conversation){dropped}; {self.samples_truncated} samples '
                f'truncated to '
                f'max_length={self.max_length} ({self.tokens_truncated} tokens cut); '
                f'{self.samples_without_loss} samples with no trained token dropped; '
                f'{self.samples_kept} samples kept ({self.tokens_kept} tokens, '
                f'{self.trained_tokens} trained)')
        if self.packed_rows:
            text += f'; packed into {self.packed_rows} rows'
        return text


@dataclass
class PipelineOptions:
    """The validated arguments of ``process_hf_dataset``."""
    tokenizer: object
    max_length: int
    dataset_map_fn: object = None
    template_map_fn: object = None
    max_dataset_length: int = None
    split: str = 'train'
    remove_unused_columns: bool = False
    rename_maps: list = field(default_factory=list)
    shuffle_before_pack: bool = True
    pack_to_max_length: bool = True
    input_ids_with_output: bool = True
    map_num_proc: int = 1
    seed: int = 0


def process_hf_dataset(dataset, tokenizer, max_length, dataset_map_fn=None, template_map_fn=None,
                       max_dataset_length=None, split='train', remove_unused_columns=False,
                       rename_maps=None, shuffle_before_pack=True, pack_to_max_length=True,
                       use_varlen_attn=False, input_ids_with_output=True, with_image_token=False,
                       map_num_proc=32, seed=0, cache_dir=None):
    """Turn a raw dataset into training rows (XTuner 0.1.x arguments).

    Args:
        dataset: a local json/jsonl/parquet/csv/txt file, a list of them, a folder, a hub name,
            a ``datasets.Dataset``/``DatasetDict``, or a config dict with ``type=`` (e.g.
            ``dict(type=load_dataset, path='json', data_files=dict(train=path))``).
        tokenizer: a tokenizer or a config dict building one.
        max_length: longest sample (longer ones are truncated and counted); also the packed
            row length.
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
        with_image_token: multimodal; not supported.
        map_num_proc: processes for the map and encode steps (capped at the CPU count).
        seed: seed for ``max_dataset_length`` sampling and the shuffle before packing.
        cache_dir: save the processed dataset here, and load it from here next time when it
            was made from the same inputs and arguments.
    """
    options = validate_options(
        tokenizer=tokenizer, max_length=max_length, dataset_map_fn=dataset_map_fn,
        template_map_fn=template_map_fn, max_dataset_length=max_dataset_length, split=split,
        remove_unused_columns=remove_unused_columns, rename_maps=rename_maps,
        shuffle_before_pack=shuffle_before_pack, pack_to_max_length=pack_to_max_length,
        use_varlen_attn=use_varlen_attn, input_ids_with_output=input_ids_with_output,
        with_image_token=with_image_token, map_num_proc=map_num_proc, seed=seed)
    if cache_dir is not None:
        return _cached(dataset, options, Path(cache_dir))
    processed, stats = run_pipeline(dataset, options)
    log_stats(stats)
    return with_length(processed)


def log_stats(stats):
    """Write the counts to the run's log; a warning when rows were dropped or cut."""
    lossy = stats.rows_dropped_by_map_fn or stats.samples_truncated or stats.samples_without_loss
    print_log(f'[xft data] {stats.summary()}', logger='current',
              level=logging.WARNING if lossy else logging.INFO)


def validate_options(tokenizer, max_length, dataset_map_fn=None, template_map_fn=None,
                     max_dataset_length=None, split='train', remove_unused_columns=False,
                     rename_maps=None, shuffle_before_pack=True, pack_to_max_length=True,
                     use_varlen_attn=False, input_ids_with_output=True, with_image_token=False,
                     map_num_proc=32, seed=0):
    """Check the interacting options once and build what is given as config dicts."""
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ConfigError(f'max_length must be a positive integer, got {max_length!r}')
    if use_varlen_attn and not pack_to_max_length:
        raise ConfigError('use_varlen_attn=True needs pack_to_max_length=True')
    if pack_to_max_length and not input_ids_with_output:
        raise ConfigError('pack_to_max_length=True packs training samples; it cannot be used '
                          'with input_ids_with_output=False')
    if with_image_token:
        raise ConfigError('with_image_token=True (multimodal data) is not supported by xft')
    if max_dataset_length is not None and (not isinstance(max_dataset_length, int)
                                           or max_dataset_length < 1):
        raise ConfigError(f'max_dataset_length must be a positive integer or None, got '
                          f'{max_dataset_length!r}')
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
    return PipelineOptions(
        tokenizer=tokenizer, max_length=max_length,
        dataset_map_fn=resolve_map_fn(dataset_map_fn),
        template_map_fn=resolve_template_map_fn(template_map_fn),
        max_dataset_length=max_dataset_length, split=split,
        remove_unused_columns=bool(remove_unused_columns), rename_maps=list(rename_maps or []),
        shuffle_before_pack=bool(shuffle_before_pack),
        pack_to_max_length=bool(pack_to_max_length),
        input_ids_with_output=bool(input_ids_with_output),
        map_num_proc=max(1, min(int(map_num_proc or 1), os.cpu_count() or 1)), seed=int(seed))


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


def run_pipeline(dataset, options, observe=None):
    """Run every step; ``observe(stage, dataset)`` (optional) sees the dataset after each one."""
    observe = observe or (lambda stage, data: None)
    stats = PipelineStats(max_length=options.max_length)
    source = load_source(dataset, options.split)
    data, where = select_rows(source.dataset, source.where, options)
    stats.rows_loaded = len(data)
    observe('load', data)

    data = map_rows(data, where, options)
    empty = empty_conversations(data)
    if empty:
        stats.rows_dropped_by_map_fn = len(empty)
        stats.first_dropped_row = where(empty[0])
        kept = sorted(set(range(len(data))) - set(empty))
        data = data.select(kept)
        where = Renumbered(where, kept)
    observe('map', data)

    data = apply_template(data, options)
    for old, new in options.rename_maps:
        data = data.rename_column(old, new)
    observe('template', data)

    data = encode_rows(data, options, where)
    stats.samples_truncated = sum(n > 0 for n in data['num_truncated_tokens'])
    stats.tokens_truncated = sum(data['num_truncated_tokens'])
    before = len(data)
    if options.input_ids_with_output:
        data = data.filter(lambda n: n > 0, input_columns='num_trained_tokens',
                           num_proc=_procs(data, options))
    stats.samples_without_loss = before - len(data)
    stats.samples_kept = len(data)
    stats.tokens_kept = sum(data['length'])
    stats.trained_tokens = sum(data['num_trained_tokens'])
    data = data.remove_columns(['num_truncated_tokens', 'num_trained_tokens'])
    observe('encode', data)

    if options.pack_to_max_length and options.split == 'train':
        if options.shuffle_before_pack:
            data = data.shuffle(seed=options.seed)
        data = pack_dataset(data, options.max_length)
        stats.packed_rows = len(data)
        observe('pack', data)
    return data, stats


def empty_conversations(data):
    import pyarrow.compute as pc
    column = data.with_format('arrow')['conversation']
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    return [int(i) for i in (lengths == 0).nonzero()[0]]


def select_rows(dataset, where, options):
    """``max_dataset_length``: a seeded random subset, keeping row locations right."""
    if options.max_dataset_length is None or options.max_dataset_length >= len(dataset):
        return dataset, where
    import numpy as np
    indices = np.random.default_rng(options.seed).choice(
        len(dataset), options.max_dataset_length, replace=False)
    indices = sorted(int(i) for i in indices)
    return dataset.select(indices), lambda index: where(indices[index])


class MapStep:
    """The map step for one row: run the map fn, normalize the turns, name the row on error."""

    def __init__(self, map_fn, where):
        self.map_fn = map_fn
        self.where = where
        self.name = getattr(map_fn, '__name__', type(map_fn).__name__) if map_fn else None

    def __call__(self, row, index):
        if self.map_fn is None:
            if 'conversation' not in row:
                raise DataError(f"{self.where(index)}: no dataset_map_fn is set, so rows need a "
                                f"'conversation' field (row has {', '.join(map(repr, row))})")
            conversation, allow_empty = row['conversation'], False
        else:
            try:
                result = self.map_fn(dict(row))
            except DataError as error:
                raise DataError(f'{self.where(index)}: {error}') from None
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
                raise DataError(f'{self.where(index)}: {self.name} failed on this row '
                                f'({type(error).__name__}: {error})') from None
            if not isinstance(result, dict) or 'conversation' not in result:
                raise DataError(f"{self.where(index)}: {self.name} must return a dict with "
                                f"'conversation', got {type(result).__name__}")
            conversation, allow_empty = result['conversation'], True
        return {'conversation': normalize_conversation(conversation, self.where(index),
                                                       allow_empty)}


def map_rows(data, where, options):
    columns = list(data.column_names)
    remove = columns if options.remove_unused_columns else \
        [c for c in columns if c == 'conversation']
    return data.map(MapStep(options.dataset_map_fn, where), with_indices=True,
                    remove_columns=remove, num_proc=_procs(data, options), desc='map',
                    features=with_conversation_feature(data.features, remove))


def apply_template(data, options):
    template_fn = options.template_map_fn
    if getattr(template_fn, 'uses_tokenizer_chat_template', False):
        return data
    return data.map(template_fn or _untemplated, num_proc=_procs(data, options),
                    desc='template', features=with_conversation_feature(data.features))


def _untemplated(example):
    """No template: the system text (if any) is put in front of the input, unchanged."""
    return {'conversation': [dict(turn, input=turn['system'] + turn['input'])
                             for turn in example['conversation']]}


class Renumbered:
    """`where` for a dataset whose rows were selected: row i is the source's row `kept[i]`."""

    def __init__(self, where, kept):
        self.where = where
        self.kept = kept

    def __call__(self, index):
        return self.where(self.kept[index])


def encode_rows(data, options, where):
    remove = [c for c in data.column_names] if options.remove_unused_columns or \
        options.pack_to_max_length else ['conversation']
    template_fn = options.template_map_fn
    if getattr(template_fn, 'uses_tokenizer_chat_template', False):
        return data.map(_ChatTemplateEncoder(options, where), with_indices=True,
                        remove_columns=remove, num_proc=_procs(data, options), desc='encode')
    return data.map(_BatchEncoder(options), batched=True, batch_size=ENCODE_BATCH_SIZE,
                    remove_columns=remove, num_proc=_procs(data, options), desc='encode')


class _BatchEncoder:
    def __init__(self, options):
        self.tokenizer = options.tokenizer
        self.max_length = options.max_length
        self.with_output = options.input_ids_with_output

    def __call__(self, batch):
        return encode_batch(batch, self.tokenizer, self.max_length, self.with_output)


class _ChatTemplateEncoder(_BatchEncoder):
    """One row at a time through the tokenizer's jinja; a row it cannot render is named."""

    def __init__(self, options, where):
        super().__init__(options)
        self.where = where

    def __call__(self, row, index):
        try:
            return encode_with_chat_template(row['conversation'], self.tokenizer,
                                             self.max_length, self.with_output)
        except DataError as error:
            raise DataError(f'{self.where(index)}: {error}') from None


def with_length(dataset):
    """Expose per-row token counts as ``dataset.length`` (what LengthGroupedSampler reads)."""
    dataset.length = list(dataset['length'])
    return dataset


def _procs(data, options):
    """Worker processes for one step over ``data``, or None for this process alone.

    Starting workers and shipping them the rows and the tokenizer costs about a second per
    step, and the tokenizer already encodes a batch on every core from one process, so a
    worker only pays for itself with thousands of rows to do.
    """
    procs = min(options.map_num_proc, len(data) // MIN_ROWS_PER_PROCESS)
    return procs if procs > 1 else None


# --- save and reload ------------------------------------------------------------------------

def _cached(dataset, options, cache_dir):
    from mmengine.dist import barrier, get_rank, is_distributed

    key = cache_key(dataset, options)
    if not _cache_matches(cache_dir, key):
        if get_rank() == 0:
            processed, stats = run_pipeline(dataset, options)
            log_stats(stats)
            processed.save_to_disk(str(cache_dir))
            (cache_dir / CACHE_META_FILE).write_text(json.dumps(
                {'key': key, 'stats': asdict(stats)}, indent=1))
            print_log(f'[xft data] processed dataset saved to {cache_dir}', logger='current')
        if is_distributed():
            barrier()
    meta = json.loads((cache_dir / CACHE_META_FILE).read_text())
    print_log(f'[xft data] loaded processed dataset from {cache_dir}: '
              f'{PipelineStats(**meta["stats"]).summary()}', logger='current')
    return with_length(datasets.load_from_disk(str(cache_dir)))


def _cache_matches(cache_dir, key):
    meta_file = cache_dir / CACHE_META_FILE
    if not meta_file.is_file():
        return False
    try:
        stored = json.loads(meta_file.read_text()).get('key')
    except json.JSONDecodeError:
        return False
    if stored != key:
        print_log(f'[xft data] {cache_dir} holds data processed with other inputs or options; '
                  'reprocessing', logger='current', level=logging.WARNING)
        return False
    return True


def cache_key(dataset, options):
    """A hash of everything the processed rows depend on."""
    tokenizer = options.tokenizer
    parts = {
        'format': PROCESSED_FORMAT_VERSION,
        'source': _describe_source(dataset),
        'tokenizer': [getattr(tokenizer, 'name_or_path', ''), len(tokenizer),
                      tokenizer.bos_token_id, tokenizer.eos_token_id,
                      getattr(tokenizer, 'chat_template', None) or ''],
        'map_fn': _qualname(options.dataset_map_fn),
        'template': repr(getattr(options.template_map_fn, 'template', None)
                         or _qualname(options.template_map_fn)),
        'options': [options.max_length, options.max_dataset_length, options.split,
                    options.remove_unused_columns, options.rename_maps,
                    options.shuffle_before_pack, options.pack_to_max_length,
                    options.input_ids_with_output, options.seed],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


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
        return {key: (_qualname(value) if callable(value) else _describe_source(value))
                for key, value in dataset.items()}
    return repr(dataset)


def _qualname(obj):
    if obj is None:
        return None
    return f'{getattr(obj, "__module__", "")}:{getattr(obj, "__qualname__", repr(obj))}'
