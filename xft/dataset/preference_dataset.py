"""``build_preference_dataset``: load -> map -> pair -> template -> encode -> filter -> pack.

XTuner 0.1.23's entry point for DPO, ORPO and reward-model data, with its arguments (checked in
``xft.dataset.preference_options``), written as ``process_hf_dataset`` is: named steps, each row
carrying its origin (file and line or row) up to the encode step, so a bad row is reported in
one line naming it (``data.json row 17: the 'chosen' answer is empty``), and counts of what
each step dropped or cut, logged and shown by ``xft check-custom-dataset``.

    train_dataset = dict(
        type=build_preference_dataset,
        dataset=dict(type=load_dataset, path='data/dpo_en_demo.json'),
        tokenizer=tokenizer, max_length=2048,
        dataset_map_fn=sharegpt_preference_map_fn,
        template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
        is_dpo=True, is_reward=False, reward_token_id=-1,
        use_varlen_attn=True, max_packed_length=4096, shuffle_before_pack=True)

XTuner's own preference format (``prompt``/``chosen``/``rejected`` chat messages) needs no map
fn; ``load_jsonl_dataset`` and XTuner's two map fns are importable from here as there.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
from mmengine.logging import print_log

from xft.utils.errors import ConfigError, DataError

from .conversation import CONVERSATION_FEATURE
from .encode import encode_batch, encode_with_chat_template
from .load import ORIGIN, load_files, load_source
from .map_fns.preference import intel_orca_dpo_map_fn, orpo_dpo_mix_40k_map_fn
from .pipeline import MIN_ROWS_PER_PROCESS, with_length
from .preference_options import PreferenceOptions
from .preference_packing import pack_pairs
from .preference_pairs import PAIR_COLUMNS, finish_pair, pair_conversations, split_encoded

ENCODE_BATCH_SIZE = 500
# The columns after the map step: the pair's two conversations and the row's origin.
PAIR_FEATURES = datasets.Features({'chosen': CONVERSATION_FEATURE, 'rejected': CONVERSATION_FEATURE,
                                   ORIGIN: datasets.Value('string')})


@dataclass
class PreferenceStats:
    """What each step did, for the log and ``xft check-custom-dataset``."""
    rows_loaded: int = 0
    pairs_truncated: int = 0
    tokens_truncated: int = 0
    pairs_without_answer: int = 0
    pairs_kept: int = 0
    tokens_kept: int = 0
    trained_tokens: int = 0
    packed_rows: int = 0
    max_length: int = 0

    def summary(self):
        text = (f'{self.rows_loaded} rows loaded; {self.pairs_truncated} pairs truncated to '
                f'max_length={self.max_length} per sequence ({self.tokens_truncated} tokens cut); '
                f'{self.pairs_without_answer} pairs with an answer cut away entirely dropped; '
                f'{self.pairs_kept} pairs kept ({self.tokens_kept} tokens, '
                f'{self.trained_tokens} trained)')
        if self.packed_rows:
            text += f'; packed into {self.packed_rows} rows'
        return text


def build_preference_dataset(dataset, **kwargs):
    """Turn raw preference rows into training rows of pairs (XTuner 0.1.23's arguments).

    Args:
        dataset: as for ``process_hf_dataset``: a local file, a list of them, a folder, a hub
            name, a ``datasets.Dataset``, or a ``dict(type=load_dataset, ...)``.
        **kwargs: the fields of ``xft.dataset.preference_options.PreferenceOptions``.
    """
    options = PreferenceOptions.from_arguments(**kwargs)
    processed, stats = run_preference_pipeline(dataset, options)
    print_log(f'[xft data] {stats.summary()}', logger='current',
              level=logging.WARNING if stats.pairs_truncated or stats.pairs_without_answer
              else logging.INFO)
    if not len(processed):
        raise DataError('no preference pair is left to train on (see the counts above)')
    return with_length(processed)


def load_jsonl_dataset(data_files=None, data_dir=None, suffix=None):
    """XTuner's loader of preference JSON-lines files: ``data_files`` (a path or a list) or
    every file of ``data_dir`` (ending in ``suffix`` when given). Rows keep their origin."""
    if (data_files is None) == (data_dir is None):
        raise ConfigError('load_jsonl_dataset: give exactly one of data_files and data_dir')
    if data_dir is not None:
        files = sorted(p for p in Path(data_dir).iterdir() if p.is_file()
                       and (suffix is None or p.name.endswith(suffix)))
    else:
        files = [Path(data_files)] if isinstance(data_files, (str, Path)) else \
            [Path(p) for p in data_files]
    for path in files:
        if not path.is_file():
            raise DataError(f'{path}: no such data file')
    return load_files(files)


def run_preference_pipeline(dataset, options, observe=None):
    """Every step in order; ``observe(stage, dataset)`` (optional) sees the data after each."""
    observe = observe or (lambda stage, data: None)
    stats = PreferenceStats(max_length=options.max_length)
    data = select_rows(load_source(dataset, options.split), options)
    stats.rows_loaded = len(data)
    observe('load', data)

    data = data.map(_PairStep(options.dataset_map_fn), remove_columns=_raw_columns(data),
                    num_proc=_procs(data, options), desc='map', features=PAIR_FEATURES)
    observe('map', data)

    if not renders_with_chat_template(options.template_map_fn):
        data = data.map(_TemplateStep(options.template_map_fn), num_proc=_procs(data, options),
                        desc='template', features=PAIR_FEATURES)
        observe('template', data)

    data = data.map(_PairEncoder(options), batched=True, batch_size=ENCODE_BATCH_SIZE,
                    remove_columns=list(data.column_names), num_proc=_procs(data, options),
                    desc='encode')
    stats.pairs_truncated = sum(n > 0 for n in data['num_truncated_tokens'])
    stats.tokens_truncated = sum(data['num_truncated_tokens'])
    before = len(data)
    data = data.filter(lambda chosen, rejected: chosen > 0 and rejected > 0,
                       input_columns=['num_trained_chosen', 'num_trained_rejected'])
    stats.pairs_without_answer = before - len(data)
    stats.pairs_kept = len(data)
    stats.tokens_kept = sum(data['length'])
    stats.trained_tokens = sum(data['num_trained_chosen']) + sum(data['num_trained_rejected'])
    data = data.remove_columns(['num_trained_chosen', 'num_trained_rejected',
                                'num_truncated_tokens'])
    observe('encode', data)

    if options.packs:
        if options.shuffle_before_pack:
            data = data.shuffle(seed=options.seed)
        data = pack_pairs(data, options.max_packed_length)
        stats.packed_rows = len(data)
        observe('pack', data)
    return data, stats


def select_rows(data, options):
    """The held-out split, then ``max_dataset_length`` (both seeded; rows keep their origin)."""
    import numpy as np
    rng = np.random.default_rng(options.seed)
    if options.held_out:
        count = options.held_out if isinstance(options.held_out, int) else \
            max(1, round(options.held_out * len(data)))
        if count >= len(data):
            raise ConfigError(f'held_out={options.held_out} sets aside {count} of the {len(data)} '
                              'rows: none is left to train on')
        held = set(rng.permutation(len(data))[:count].tolist())
        keep = [i for i in range(len(data)) if (i in held) == (options.subset == 'held_out')]
        data = data.select(keep)
    limit = options.max_dataset_length
    if limit is not None and limit < len(data):
        data = data.select(sorted(rng.choice(len(data), limit, replace=False).tolist()))
    return data


def renders_with_chat_template(template_fn) -> bool:
    """No template_map_fn, or the template that defers to the tokenizer: its chat_template
    renders the conversations at the encode step."""
    return template_fn is None or bool(getattr(template_fn, 'uses_tokenizer_chat_template', False))


def _raw_columns(data):
    return [c for c in data.column_names if c != ORIGIN]


def _procs(data, options):
    procs = min(options.num_proc, len(data) // MIN_ROWS_PER_PROCESS)
    return procs if procs > 1 else None


class _PairStep:
    """Map fn (when set), then the two conversations; a bad row is named in one line."""

    def __init__(self, map_fn):
        self.map_fn = map_fn
        self.name = getattr(map_fn, '__name__', type(map_fn).__name__) if map_fn else None

    def __call__(self, row):
        origin = row[ORIGIN]
        # A field this row lacks is None once Arrow has put the rows in one table: leave it out,
        # so an error lists what the row really has.
        raw = {key: value for key, value in row.items() if key != ORIGIN and value is not None}
        if self.map_fn is not None:
            try:
                raw = self.map_fn(raw)
            except DataError as error:
                raise DataError(f'{origin}: {error}') from None
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
                raise DataError(f'{origin}: {self.name} failed on this row '
                                f'({type(error).__name__}: {error})') from None
        chosen, rejected = pair_conversations(raw, origin)
        return {'chosen': chosen, 'rejected': rejected}


class _TemplateStep:
    def __init__(self, template_fn):
        self.template_fn = template_fn

    def __call__(self, row):
        return {key: self.template_fn({'conversation': row[key]})['conversation']
                for key in ('chosen', 'rejected')}


class _PairEncoder:
    """Both conversations of each row, encoded in one tokenizer call, then made one pair row."""

    def __init__(self, options):
        self.tokenizer = options.tokenizer
        self.max_length = options.max_length
        self.reward = bool(options.is_reward)
        self.reward_token_id = options.reward_token_id
        self.chat_template = renders_with_chat_template(options.template_map_fn)

    def __call__(self, batch):
        conversations = [conv for pair in zip(batch['chosen'], batch['rejected']) for conv in pair]
        if self.chat_template:
            encoded = self._with_chat_template(conversations, batch[ORIGIN])
        else:
            encoded = encode_batch({'conversation': conversations}, self.tokenizer,
                                   self.max_length)
        rows = [finish_pair(chosen, rejected, self.reward, self.reward_token_id, self.max_length)
                for chosen, rejected in split_encoded(encoded)]
        return {column: [row[column] for row in rows] for column in PAIR_COLUMNS}

    def _with_chat_template(self, conversations, origins):
        encoded = []
        for position, conversation in enumerate(conversations):
            try:
                encoded.append(encode_with_chat_template(conversation, self.tokenizer,
                                                         self.max_length))
            except DataError as error:
                raise DataError(f'{origins[position // 2]}: {error}') from None
        return {column: [row[column] for row in encoded] for column in encoded[0]}


__all__ = ['build_preference_dataset', 'load_jsonl_dataset', 'orpo_dpo_mix_40k_map_fn',
           'intel_orca_dpo_map_fn', 'run_preference_pipeline', 'PreferenceStats']
