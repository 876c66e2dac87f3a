"""The data commands: ``xft check-custom-dataset``, ``xft log-dataset``, ``xft list-dataset-format``.

Each ``*_main(argv) -> int`` parses its arguments, prints its report, and returns the exit code
(``xft.tools.command``): 0 when the data is usable, 2 with one line ``xft VERB: ...`` naming the
file and row when it is not. A config is named as for every other verb: a path or the bare name
of a zoo config (``xft.engine.config.load_config``).
"""
import argparse
import json

from xft.registry import build_nested
from xft.tools.command import run_command
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError

TRAINED_OPEN, TRAINED_CLOSE = '«', '»'
SHOW_CHOICES = ('text', 'masked_text', 'input_ids', 'labels', 'all')
PREVIEW_CHARS = 600


# --- xft check-custom-dataset ------------------------------------------------------------------

def check_custom_dataset_main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog='xft check-custom-dataset',
        description="Run a config's data through every step (load, map, template, encode, "
                    'pack), print the first sample after each, the counts, and the problems.')
    parser.add_argument('config', help='the config: a path or a zoo name (`xft list-cfg`)')
    parser.add_argument('--max-rows', type=int, default=None,
                        help='check only this many rows (a seeded random subset)')
    _add_cfg_options(parser)
    args = parser.parse_args(argv)
    _quiet_progress_bars()
    return run_command('check-custom-dataset', check_custom_dataset, args)


def check_custom_dataset(args) -> None:
    from xft.engine.config import load_config
    entries = dataset_entries(load_config(args.config, args.cfg_options))
    problems = []
    for number, entry in enumerate(entries):
        if len(entries) > 1:
            print(f'=== dataset {number + 1} of {len(entries)} ===')
        problems += check_entry(entry, args.max_rows)
    if problems:
        print(f'{len(problems)} problem(s):')
        for problem in problems:
            print(f'  - {problem}')
    else:
        print('no problems found')


def check_entry(entry, max_rows=None):
    """Run one ``process_hf_dataset`` (or ``build_preference_dataset``) entry step by step;
    return the problems found."""
    if is_preference_entry(entry):
        return check_preference_entry(entry, max_rows)
    if is_packed_repo_entry(entry):
        return check_packed_repo_entry(entry)
    from xft.dataset.pipeline import run_pipeline

    dataset, options = pipeline_inputs(entry, max_rows)
    tokenizer = options.tokenizer

    def observe(stage, data):
        print(f'--- after {stage}: {len(data)} rows ---')
        if len(data):
            print(describe_row(data[0], tokenizer))

    _, stats = run_pipeline(dataset, options, observe)
    print(f'counts: {stats.summary()}')
    return problems_found(stats, options)


def problems_found(stats, options):
    problems = []
    if stats.rows_dropped_by_map_fn:
        problems.append(f'{stats.rows_dropped_by_map_fn} rows mapped to an empty conversation '
                        f'and were dropped (the first: {stats.first_dropped_row})')
    if stats.samples_truncated:
        problems.append(f'{stats.samples_truncated} samples are longer than max_length='
                        f'{options.max_length} and were truncated ({stats.tokens_truncated} '
                        'tokens cut)')
    if stats.samples_without_loss:
        problems.append(f'{stats.samples_without_loss} samples have no trained token left '
                        '(truncated before the answer) and were dropped')
    if stats.samples_kept == 0:
        problems.append('no sample is left to train on')
    return problems + tokenizer_problems(options)


def tokenizer_problems(options):
    """What the tokenizer and template would get wrong in training or generation."""
    problems = []
    tokenizer = options.tokenizer
    if tokenizer is None:  # pre-tokenized rows without one: nothing to check
        return problems
    template = getattr(options.template_map_fn, 'template', None) or {}
    for name in ('SUFFIX',):
        text = template.get(name)
        if text and len(tokenizer(text, add_special_tokens=False)['input_ids']) > 1:
            problems.append(f'the template {name} {text!r} is not one token for this tokenizer '
                            '(not a special token); generation may not stop cleanly')
    if tokenizer.pad_token_id is None:
        problems.append('the tokenizer has no pad_token; set one (collate pads with pad_index)')
    return problems


def check_preference_entry(entry, max_rows=None):
    """``check_entry`` for preference pairs: every step, its first row, counts, problems."""
    from xft.dataset.preference_dataset import run_preference_pipeline

    # Every row of the data, the pairs held out for evaluation too.
    dataset, options = preference_inputs(dict(entry, held_out=0, subset='train'), max_rows)
    tokenizer = options.tokenizer

    def observe(stage, data):
        print(f'--- after {stage}: {len(data)} rows ---')
        if len(data):
            print(describe_row(data[0], tokenizer, pairs=True))

    _, stats = run_preference_pipeline(dataset, options, observe)
    print(f'counts: {stats.summary()}')
    problems = []
    if stats.pairs_truncated:
        problems.append(f'{stats.pairs_truncated} pairs have a sequence longer than max_length='
                        f'{options.max_length}, cut at the end ({stats.tokens_truncated} tokens)')
    if stats.pairs_without_answer:
        problems.append(f'{stats.pairs_without_answer} pairs lost an answer entirely to truncation '
                        'and were dropped')
    if stats.pairs_kept == 0:
        problems.append('no pair is left to train on')
    if tokenizer.pad_token_id is None:
        problems.append('the tokenizer has no pad_token; set one (collate pads with pad_index)')
    return problems


def check_packed_repo_entry(entry):
    """``check_entry`` for InternLM-repo folders: read and pack them, show the first row, count."""
    data = build_nested(dict(entry))
    print(f'--- after reading and packing: {len(data)} rows ---')
    if len(data):
        print(describe_row(data[0], None))
    print(f'counts: {packed_repo_summary(data)}')
    return [] if len(data) else ['no sample is left to train on']


def packed_repo_summary(data) -> str:
    tokens = sum(data['length'])
    trained = sum(label != IGNORE_INDEX for labels in data['labels'] for label in labels)
    return f'{len(data)} packed rows ({tokens} tokens, {trained} trained)'


# --- xft log-dataset ---------------------------------------------------------------------------

def log_dataset_main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog='xft log-dataset',
        description='Print processed training rows as the model sees them. In masked_text the '
                    f'trained text is marked {TRAINED_OPEN}like this{TRAINED_CLOSE}.')
    parser.add_argument('config', help='the config: a path or a zoo name (`xft list-cfg`)')
    parser.add_argument('--show', choices=SHOW_CHOICES, default='all')
    parser.add_argument('--index', type=int, default=0, help='first row to print')
    parser.add_argument('--count', type=int, default=1, help='how many rows to print')
    parser.add_argument('--max-rows', type=int, default=None,
                        help='process only this many rows (a seeded random subset)')
    _add_cfg_options(parser)
    args = parser.parse_args(argv)
    _quiet_progress_bars()
    return run_command('log-dataset', log_dataset, args)


def log_dataset(args) -> None:
    from xft.dataset.pipeline import run_pipeline
    from xft.engine.config import load_config
    from xft.dataset.preference_dataset import run_preference_pipeline
    for entry in dataset_entries(load_config(args.config, args.cfg_options)):
        pairs, tokenizer = is_preference_entry(entry), None
        if pairs:
            dataset, options = preference_inputs(entry, args.max_rows)
            data, stats = run_preference_pipeline(dataset, options)
            tokenizer, summary = options.tokenizer, stats.summary()
        elif is_packed_repo_entry(entry):  # token ids read as they are: shown as ids
            data = build_nested(dict(entry))
            summary = packed_repo_summary(data)
        else:
            dataset, options = pipeline_inputs(entry, args.max_rows)
            data, stats = run_pipeline(dataset, options)
            tokenizer, summary = options.tokenizer, stats.summary()
        print(f'counts: {summary}')
        for index in range(args.index, min(args.index + args.count, len(data))):
            print(f'=== row {index} ===')
            print(show_pairs(data[index], tokenizer, args.show) if pairs
                  else show_row(data[index], tokenizer, args.show))


def show_row(row, tokenizer, show):
    parts = []
    if show in ('text', 'all'):
        parts.append('[text]\n' + (tokenizer.decode(row['input_ids']) if tokenizer is not None
                                    else '(no tokenizer in the config: see input_ids)'))
    if show in ('masked_text', 'all'):
        parts.append('[masked_text]\n' + masked_text(row['input_ids'], row['labels'], tokenizer))
    if show in ('input_ids', 'all'):
        parts.append(f'[input_ids]\n{row["input_ids"]}')
    if show in ('labels', 'all'):
        parts.append(f'[labels]\n{row["labels"]}')
    if 'cumulative_len' in row and show == 'all':
        parts.append(f'[cumulative_len]\n{row["cumulative_len"]}')
    return '\n'.join(parts)


def pair_sequences(row):
    """[(name, ids, labels)] of a preference row: 'pair 0 chosen', 'pair 0 rejected', ..."""
    bounds = row['cumulative_len']
    return [(f'pair {i // 2} {"rejected" if i % 2 else "chosen"}', row['input_ids'][a:b],
             row['labels'][a:b]) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def show_pairs(row, tokenizer, show):
    """``show_row`` for a row of preference pairs: each sequence on its own."""
    parts = []
    for name, input_ids, labels in pair_sequences(row):
        parts.append(f'--- {name} ({len(input_ids)} tokens) ---')
        parts.append(show_row({'input_ids': input_ids, 'labels': labels}, tokenizer, show))
    return '\n'.join(parts)


def masked_text(input_ids, labels, tokenizer):
    """Decoded text with each trained run of tokens wrapped in « »."""
    pieces, run, run_trained = [], [], None
    for token, label in zip(input_ids, labels):
        trained = label != IGNORE_INDEX
        if run and trained != run_trained:
            pieces.append(_decode_run(tokenizer, run, run_trained))
            run = []
        run.append(token)
        run_trained = trained
    if run:
        pieces.append(_decode_run(tokenizer, run, run_trained))
    return ''.join(pieces)


def _decode_run(tokenizer, tokens, trained):
    # Pre-tokenized data may come without a tokenizer: the ids stand in for the text.
    text = tokenizer.decode(tokens) if tokenizer is not None else ' '.join(map(str, tokens)) + ' '
    return f'{TRAINED_OPEN}{text}{TRAINED_CLOSE}' if trained else text


# --- xft list-dataset-format -------------------------------------------------------------------

def list_dataset_format_main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog='xft list-dataset-format',
        description='List the dataset map functions, the fields each reads, and the templates.')
    parser.parse_args(argv)
    from xft.dataset.map_fns import registered_map_fns
    from xft.dataset.map_fns._fields import describe_fields
    from xft.utils.templates import PROMPT_TEMPLATE
    print('dataset_map_fn (import from xft.dataset.map_fns)   fields of one raw row')
    for name, map_fn in registered_map_fns().items():
        print(f'  {name:28s}{describe_fields(map_fn)}')
    print('\nWithout a dataset_map_fn, rows must already be in the conversation format:\n'
          '  {"conversation": [{"system": "...", "input": "...", "output": "..."}, ...]}\n'
          '  (system optional; every output, plus the template SUFFIX or EOS, is trained)')
    print('\nprompt templates (xft.utils.PROMPT_TEMPLATE):')
    print('  ' + ', '.join(PROMPT_TEMPLATE))
    print('\nPreference pairs (build_preference_dataset) without a dataset_map_fn are XTuner\'s format:\n'
          '  {"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", '
          '"content": "..."}],\n   "rejected": [{"role": "assistant", "content": "..."}]}')
    print('\nfiles: .json (array or JSON lines), .jsonl, .parquet, .csv, .txt (one row per '
          'line, field "text"), a folder of them, or a hub name')
    return 0


# --- shared helpers ----------------------------------------------------------------------------

def _quiet_progress_bars():
    # The report is the output; per-step progress bars would bury it.
    import datasets
    datasets.disable_progress_bars()


def _add_cfg_options(parser):
    from mmengine.config import DictAction
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, default=None,
        help='override config entries, e.g. train_dataloader.dataset.dataset.path=/data/x.json')


def entry_builds(entry, builder) -> bool:
    """Whether a config dict's ``type`` is ``builder``, given as the object or by its name."""
    kind = entry.get('type') if isinstance(entry, dict) else None
    return kind is builder or kind == builder.__name__


def is_preference_entry(entry) -> bool:
    from xft.dataset.preference_dataset import build_preference_dataset
    return entry_builds(entry, build_preference_dataset)


def is_packed_repo_entry(entry) -> bool:
    """XTuner's InternLM-repo data: ``dict(type=build_packed_dataset, dataset_cfg=...)``."""
    from xft.dataset.intern_repo import build_packed_dataset
    return entry_builds(entry, build_packed_dataset)


def dataset_entries(cfg):
    """The ``process_hf_dataset`` (or ``build_preference_dataset``, ``build_packed_dataset``)
    dicts of ``cfg.train_dataloader.dataset`` (ConcatDataset too)."""
    from xft.dataset import ConcatDataset, process_hf_dataset

    loader = cfg.get('train_dataloader') or {}
    entry = loader.get('dataset') if isinstance(loader, dict) else None
    if not isinstance(entry, dict):
        raise ConfigError('the config has no train_dataloader.dataset dict')
    entries = list(entry.get('datasets') or []) if entry_builds(entry, ConcatDataset) else [entry]
    for item in entries:
        if not (entry_builds(item, process_hf_dataset) or is_preference_entry(item) or is_packed_repo_entry(item)):
            item_type = item.get('type') if isinstance(item, dict) else None
            name = getattr(item_type, '__name__', item_type)
            raise ConfigError('train_dataloader.dataset must be dict(type=process_hf_dataset, ...), '
                              'dict(type=build_preference_dataset, ...) or dict(type=build_packed_dataset, '
                              f'...) (or a ConcatDataset of them), got type {name!r}')
    return entries


def pipeline_inputs(entry, max_rows=None):
    """(raw dataset spec, checked PipelineOptions) of one process_hf_dataset entry."""
    from xft.dataset.options import PipelineOptions

    kwargs = {key: value for key, value in entry.items() if key not in ('type', 'cache_dir')}
    dataset = kwargs.pop('dataset', None)
    if dataset is None:
        raise ConfigError('process_hf_dataset entry has no dataset=')
    if max_rows is not None:
        kwargs['max_dataset_length'] = max_rows
    return dataset, PipelineOptions.from_arguments(**kwargs)


def preference_inputs(entry, max_rows=None):
    """(raw dataset spec, checked PreferenceOptions) of one build_preference_dataset entry."""
    from xft.dataset.preference_options import PreferenceOptions

    kwargs = {key: value for key, value in entry.items() if key != 'type'}
    dataset = kwargs.pop('dataset', None)
    if dataset is None:
        raise ConfigError('build_preference_dataset entry has no dataset=')
    if max_rows is not None:
        kwargs['max_dataset_length'] = max_rows
    return dataset, PreferenceOptions.from_arguments(**kwargs)


def describe_row(row, tokenizer, pairs=False):
    """A short printable view of one row at any stage (its origin column left out);
    ``pairs``: an encoded row holds preference pairs, shown sequence by sequence."""
    from xft.dataset.load import ORIGIN

    row = {key: value for key, value in row.items() if key != ORIGIN}
    if pairs and 'input_ids' in row and 'cumulative_len' in row:
        return '\n'.join(f'{name} ({len(ids)} tokens), trained text marked '
                         f'{TRAINED_OPEN}{TRAINED_CLOSE}:\n{_clip(masked_text(ids, labels, tokenizer))}'
                         for name, ids, labels in pair_sequences(row)[:2])
    if 'input_ids' in row and 'labels' in row:
        text = masked_text(row['input_ids'], row['labels'], tokenizer)
        extra = f' cumulative_len={row["cumulative_len"]}' if 'cumulative_len' in row else ''
        return (f'{len(row["input_ids"])} tokens{extra}; trained text marked '
                f'{TRAINED_OPEN}{TRAINED_CLOSE}:\n{_clip(text)}')
    return _clip(json.dumps(row, ensure_ascii=False, indent=1, default=str))


def _clip(text):
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + f' ... ({len(text)} chars)'
