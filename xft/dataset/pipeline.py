"""``process_hf_dataset``: load -> map -> template -> encode -> filter -> pack.

Each step is one function below; ``run_pipeline`` runs them in order and counts what each one
dropped or cut, and ``process_hf_dataset`` (XTuner's name and arguments) checks the options once
(``xft.dataset.options.PipelineOptions``), runs the pipeline, logs the counts, and can save the
result to ``cache_dir`` and load it back next time without reprocessing. Each row carries its
origin (``load.ORIGIN``) up to the encode step, so any step names the file and line it fails on.
Rows that already hold token ids (``do_dataset_tokenization=False``) skip map, template and
encode: their ids are checked and cut to ``max_length`` instead.
"""
import inspect
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
from mmengine.logging import print_log

from xft.utils.errors import DataError

from .conversation import normalize_conversation, with_conversation_feature
from .encode import encode_batch, encode_pretokenized, encode_with_chat_template
from .load import ORIGIN, load_source
from .options import PipelineOptions, options_signature
from .packing import pack_dataset

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
        cut = (f'{self.samples_truncated} samples truncated to max_length={self.max_length} '
               f'({self.tokens_truncated} tokens cut)' if self.max_length else 'no max_length: nothing cut')
        text = (f'{self.rows_loaded} rows loaded; {self.rows_dropped_by_map_fn} dropped by the '
                f'map fn (empty conversation){dropped}; {cut}; '
                f'{self.samples_without_loss} samples with no trained token dropped; '
                f'{self.samples_kept} samples kept ({self.tokens_kept} tokens, '
                f'{self.trained_tokens} trained)')
        if self.packed_rows:
            text += f'; packed into {self.packed_rows} rows'
        return text


def process_hf_dataset(dataset, *args, cache_dir=None, **kwargs):
    """Turn a raw dataset into training rows (XTuner 0.1.x arguments).

    Args:
        dataset: a local json/jsonl/parquet/csv/txt file, a list of them, a folder, a hub name,
            a ``datasets.Dataset``, or a ``dict(type=load_dataset, path=..., data_files=...)``.
        *args, **kwargs: the options, by keyword as XTuner's configs pass them (``tokenizer``,
            ``max_length``, ``dataset_map_fn``, ...): the fields of
            ``xft.dataset.options.PipelineOptions``, which documents and checks each one.
        cache_dir: save the processed dataset here, and load it from here next time when it
            was made from the same inputs and options.
    """
    options = PipelineOptions.from_arguments(*args, **kwargs)
    if cache_dir is not None:
        return _cached(dataset, options, Path(cache_dir))
    processed, stats = run_pipeline(dataset, options)
    log_stats(stats)
    return with_length(processed)


# The options are declared once, in PipelineOptions; help() and inspect show them from there.
process_hf_dataset.__signature__ = options_signature(
    leading=[inspect.Parameter('dataset', inspect.Parameter.POSITIONAL_OR_KEYWORD)],
    trailing=[inspect.Parameter('cache_dir', inspect.Parameter.KEYWORD_ONLY, default=None)])


def log_stats(stats):
    """Write the counts to the run's log; a warning when rows were dropped or cut."""
    lossy = stats.rows_dropped_by_map_fn or stats.samples_truncated or stats.samples_without_loss
    print_log(f'[xft data] {stats.summary()}', logger='current',
              level=logging.WARNING if lossy else logging.INFO)


def run_pipeline(dataset, options, observe=None):
    """Run every step; ``observe(stage, dataset)`` (optional) sees the dataset after each one."""
    observe = observe or (lambda stage, data: None)
    stats = PipelineStats(max_length=options.max_length or 0)
    data = select_rows(load_source(dataset, options.split), options)
    stats.rows_loaded = len(data)
    observe('load', data)

    if options.do_dataset_tokenization:
        data = map_rows(data, options)
        empty = empty_conversations(data)
        if empty:
            stats.rows_dropped_by_map_fn = len(empty)
            stats.first_dropped_row = data[empty[0]][ORIGIN]
            data = data.select(sorted(set(range(len(data))) - set(empty)))
        observe('map', data)

        data = apply_template(data, options)
        for old, new in options.rename_maps:
            data = data.rename_column(old, new)
        observe('template', data)

        data = encode_rows(data, options)
    else:
        for old, new in options.rename_maps:
            data = data.rename_column(old, new)
        data = check_pretokenized_rows(data, options)
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


def select_rows(dataset, options):
    """``max_dataset_length``: a seeded random subset (each row keeps its origin)."""
    if options.max_dataset_length is None or options.max_dataset_length >= len(dataset):
        return dataset
    import numpy as np
    indices = np.random.default_rng(options.seed).choice(
        len(dataset), options.max_dataset_length, replace=False)
    return dataset.select(sorted(int(i) for i in indices))


class MapStep:
    """The map step for one row: run the map fn, normalize the turns, name the row on error."""

    def __init__(self, map_fn):
        self.map_fn = map_fn
        self.name = getattr(map_fn, '__name__', type(map_fn).__name__) if map_fn else None

    def __call__(self, row):
        origin = row[ORIGIN]
        raw = {key: value for key, value in row.items() if key != ORIGIN}
        if self.map_fn is None:
            if 'conversation' not in raw:
                raise DataError(f"{origin}: no dataset_map_fn is set, so rows need a "
                                f"'conversation' field (row has {', '.join(map(repr, raw))})")
            conversation, allow_empty = raw['conversation'], False
        else:
            try:
                result = self.map_fn(raw)
            except DataError as error:
                raise DataError(f'{origin}: {error}') from None
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
                raise DataError(f'{origin}: {self.name} failed on this row '
                                f'({type(error).__name__}: {error})') from None
            if not isinstance(result, dict) or 'conversation' not in result:
                raise DataError(f"{origin}: {self.name} must return a dict with "
                                f"'conversation', got {type(result).__name__}")
            conversation, allow_empty = result['conversation'], True
        return {'conversation': normalize_conversation(conversation, origin, allow_empty)}


def map_rows(data, options):
    columns = [c for c in data.column_names if c != ORIGIN]
    remove = columns if options.remove_unused_columns else \
        [c for c in columns if c == 'conversation']
    return data.map(MapStep(options.dataset_map_fn), remove_columns=remove,
                    num_proc=_procs(data, options), desc='map',
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


def encode_rows(data, options):
    """Token ids for each row; the origin column ends here (packed rows mix several rows)."""
    remove = list(data.column_names) if options.remove_unused_columns or \
        options.pack_to_max_length else ['conversation', ORIGIN]
    template_fn = options.template_map_fn
    if getattr(template_fn, 'uses_tokenizer_chat_template', False):
        return data.map(_ChatTemplateEncoder(options), remove_columns=remove,
                        num_proc=_procs(data, options), desc='encode')
    return data.map(_BatchEncoder(options), batched=True, batch_size=ENCODE_BATCH_SIZE,
                    remove_columns=remove, num_proc=_procs(data, options), desc='encode')


def check_pretokenized_rows(data, options):
    """``do_dataset_tokenization=False``: rows already hold ``input_ids`` (and maybe ``labels``);
    each is checked against the tokenizer's vocabulary and cut to ``max_length`` (when set)."""
    columns = [c for c in data.column_names if c != ORIGIN]
    if 'input_ids' not in columns:
        first = data[0][ORIGIN] if len(data) else 'the dataset'
        raise DataError(f"{first}: do_dataset_tokenization=False needs rows holding 'input_ids' (token "
                        f"ids, and optionally 'labels'); the rows have {', '.join(map(repr, columns))}")
    remove = list(data.column_names) if options.remove_unused_columns or options.pack_to_max_length \
        else [c for c in ('input_ids', 'labels', ORIGIN) if c in data.column_names]
    return data.map(_PretokenizedRow(options), remove_columns=remove, num_proc=_procs(data, options),
                    desc='check token ids')


class _PretokenizedRow:
    def __init__(self, options):
        self.vocab_size = len(options.tokenizer) if options.tokenizer is not None else None
        self.max_length = options.max_length

    def __call__(self, row):
        try:
            return encode_pretokenized(row['input_ids'], row.get('labels'), self.vocab_size, self.max_length)
        except DataError as error:
            raise DataError(f'{row[ORIGIN]}: {error}') from None


class _BatchEncoder:
    def __init__(self, options):
        self.tokenizer = options.tokenizer
        self.max_length = options.max_length
        self.with_output = options.input_ids_with_output

    def __call__(self, batch):
        return encode_batch(batch, self.tokenizer, self.max_length, self.with_output)


class _ChatTemplateEncoder(_BatchEncoder):
    """One row at a time through the tokenizer's jinja; a row it cannot render is named."""

    def __call__(self, row):
        try:
            return encode_with_chat_template(row['conversation'], self.tokenizer,
                                             self.max_length, self.with_output)
        except DataError as error:
            raise DataError(f'{row[ORIGIN]}: {error}') from None


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

    key = options.cache_key(dataset)
    if get_rank() == 0 and not _cache_matches(cache_dir, key):
        processed, stats = run_pipeline(dataset, options)
        log_stats(stats)
        processed.save_to_disk(str(cache_dir))
        (cache_dir / CACHE_META_FILE).write_text(json.dumps(
            {'key': key, 'stats': asdict(stats)}, indent=1))
        print_log(f'[xft data] processed dataset saved to {cache_dir}', logger='current')
    # Every rank passes this barrier, whatever it finds on disk: a rank that looked only after
    # rank 0 had written the cache once skipped it and went on to the next collective while
    # rank 0 waited here, and both hung until gloo's 30-minute timeout.
    if is_distributed():
        barrier()
        if get_rank() != 0 and not _cache_matches(cache_dir, key):
            raise DataError(f'{cache_dir}: rank {get_rank()} does not find the dataset rank 0 has just '
                            'processed there; with several nodes, cache_dir must be on a filesystem '
                            'they share')
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
