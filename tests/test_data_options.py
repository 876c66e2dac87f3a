"""process_hf_dataset's options are declared once (PipelineOptions): the signature, the checks,
the defaults and the cache key all come from it; each row's origin travels with the row."""
import dataclasses
import inspect
import json

import pytest

from xft.dataset import process_hf_dataset
from xft.dataset.load import ORIGIN, load_source
from xft.dataset.map_fns import alpaca_map_fn, template_map_fn_factory
from xft.dataset.options import SHAPES_ROWS, PipelineOptions
from xft.utils.errors import ConfigError, DataError

XTUNER_KEYWORDS = ['dataset', 'tokenizer', 'max_length', 'dataset_map_fn', 'template_map_fn',
                   'max_dataset_length', 'split', 'remove_unused_columns', 'rename_maps',
                   'shuffle_before_pack', 'pack_to_max_length', 'use_varlen_attn',
                   'input_ids_with_output', 'with_image_token', 'map_num_proc']


def test_the_signature_lists_xtuners_keywords_from_the_one_declaration():
    parameters = inspect.signature(process_hf_dataset).parameters
    assert set(XTUNER_KEYWORDS) <= set(parameters)
    assert list(parameters) == ['dataset', *(f.name for f in dataclasses.fields(PipelineOptions)),
                                'cache_dir']
    # One default per option, wherever it is read (map_num_proc once had two).
    assert parameters['map_num_proc'].default == 32 == PipelineOptions.map_num_proc


def test_the_options_check_themselves_one_line_each(tiny_tokenizer):
    cases = [
        (dict(max_length=0), 'max_length must be a positive integer, got 0'),
        (dict(max_length=64, use_varlen_attn=True, pack_to_max_length=False),
         'use_varlen_attn=True needs pack_to_max_length=True'),
        (dict(max_length=64, input_ids_with_output=False),
         'pack_to_max_length=True packs training samples; it cannot be used with '
         'input_ids_with_output=False'),
        (dict(max_length=64, with_image_token=True),
         'with_image_token=True (multimodal data) is not supported by xft'),
        (dict(max_length=64, max_dataset_length=-1),
         'max_dataset_length must be a positive integer or None, got -1'),
        (dict(max_length=64, dataset_map_fn='alpacca_map_fn'), "unknown dataset_map_fn 'alpacca"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError) as error:
            PipelineOptions(tokenizer=tiny_tokenizer, **kwargs)
        assert str(error.value).startswith(message) and '\n' not in str(error.value)


def test_unknown_and_missing_arguments_are_one_line(tiny_tokenizer):
    with pytest.raises(ConfigError, match='^process_hf_dataset got unknown arguments: '
                                          'max_len, shuffle$'):
        process_hf_dataset('x.json', tokenizer=tiny_tokenizer, max_len=64, shuffle=True)
    with pytest.raises(ConfigError, match='^process_hf_dataset needs max_length$'):
        process_hf_dataset('x.json', tokenizer=tiny_tokenizer)


def test_every_option_that_shapes_the_rows_changes_the_cache_key(tiny_tokenizer, tmp_path):
    from helpers.models import build_tiny_tokenizer
    base = dict(tokenizer=tiny_tokenizer, max_length=64, pack_to_max_length=False)
    other = {
        'tokenizer': build_tiny_tokenizer(vocab_size=300), 'max_length': 32,
        'dataset_map_fn': alpaca_map_fn,
        'template_map_fn': dict(type=template_map_fn_factory, template='chatml'),
        'max_dataset_length': 5, 'split': 'validation', 'remove_unused_columns': True,
        'rename_maps': [('a', 'b')], 'shuffle_before_pack': False, 'pack_to_max_length': True,
        'input_ids_with_output': False, 'do_dataset_tokenization': False, 'seed': 1,
    }
    shaping = {f.name for f in dataclasses.fields(PipelineOptions) if f.metadata.get(SHAPES_ROWS, True)}
    assert shaping == set(other), 'give the new option a second value here'
    source = tmp_path / 'rows.json'
    source.write_text('[]')
    key = PipelineOptions(**base).cache_key(source)
    for name, value in other.items():
        assert PipelineOptions(**{**base, name: value}).cache_key(source) != key, name
    assert PipelineOptions(**base, map_num_proc=1).cache_key(source) == key


def test_the_origin_rides_with_each_row_and_leaves_at_encode(tmp_path, tiny_tokenizer):
    from xft.dataset.pipeline import run_pipeline
    rows = [{'instruction': f'q{i}', 'input': '', 'output': '<nooutput>' if i % 3 == 0 else f'a{i}'}
            for i in range(12)]
    path = tmp_path / 'rows.json'
    path.write_text(json.dumps(rows))
    seen = {}
    options = PipelineOptions(tokenizer=tiny_tokenizer, max_length=64, max_dataset_length=8,
                              dataset_map_fn=alpaca_map_fn, pack_to_max_length=False, seed=3)
    data, stats = run_pipeline(path, options, observe=lambda stage, rows: seen.setdefault(stage, rows))
    # Sampled (8 of 12), then mapped with the <nooutput> rows dropped: every row still carries
    # the file and row it came from.
    sampled = seen['load']
    assert len(sampled) == 8 and all(
        row[ORIGIN] == f"{path} row {int(row['instruction'][1:]) + 1}" for row in sampled)
    assert all(row[ORIGIN] == f"{path} row {int(row['conversation'][0]['input'].strip()[1:]) + 1}"
               for row in seen['map'])
    assert stats.first_dropped_row == next(row[ORIGIN] for row in sampled
                                           if row['output'] == '<nooutput>')
    assert ORIGIN not in data.column_names and len(data) == len(seen['map'])


def test_a_bad_row_is_named_by_its_origin(tmp_path, tiny_tokenizer):
    rows = [{'instruction': 'q', 'input': '', 'output': 'a'}] * 7 + [{'instruction': 'q', 'answer': 'a'}]
    path = tmp_path / 'rows.jsonl'
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    assert load_source(path)[4][ORIGIN] == f'{path} line 5'
    with pytest.raises(DataError, match=rf'^{path} line 8: alpaca_map_fn expects fields'):
        process_hf_dataset(path, tiny_tokenizer, 64, dataset_map_fn=alpaca_map_fn,
                           pack_to_max_length=False)


def _as_rank(monkeypatch, rank, barriers):
    import mmengine.dist
    monkeypatch.setattr(mmengine.dist, 'get_rank', lambda: rank)
    monkeypatch.setattr(mmengine.dist, 'is_distributed', lambda: True)
    monkeypatch.setattr(mmengine.dist, 'barrier', lambda: barriers.append(rank))


def test_every_rank_meets_rank_zero_at_the_cache_barrier_even_when_the_cache_is_already_written(
        tmp_path, tiny_tokenizer, monkeypatch):
    # A rank slower than rank 0 used to find the cache written, skip the barrier and wait at the
    # next collective while rank 0 waited at this one: both hung (CI, 2026-12-07).
    from xft.dataset.pipeline import _cached
    path = tmp_path / 'rows.json'
    path.write_text(json.dumps([{'instruction': f'q{i}', 'input': '', 'output': f'a{i}'} for i in range(6)]))
    options = PipelineOptions(tokenizer=tiny_tokenizer, max_length=64, dataset_map_fn=alpaca_map_fn,
                              pack_to_max_length=False)
    cache_dir = tmp_path / 'cache'
    barriers = []
    _as_rank(monkeypatch, 0, barriers)
    written = _cached(path, options, cache_dir)
    _as_rank(monkeypatch, 1, barriers)
    loaded = _cached(path, options, cache_dir)
    assert barriers == [0, 1]
    assert loaded['input_ids'] == written['input_ids'] and len(loaded) == 6


def test_a_rank_that_cannot_see_rank_zeros_cache_says_the_filesystem_must_be_shared(
        tmp_path, tiny_tokenizer, monkeypatch):
    from xft.dataset.pipeline import _cached
    path = tmp_path / 'rows.json'
    path.write_text(json.dumps([{'instruction': 'q', 'input': '', 'output': 'a'}]))
    options = PipelineOptions(tokenizer=tiny_tokenizer, max_length=64, dataset_map_fn=alpaca_map_fn,
                              pack_to_max_length=False)
    _as_rank(monkeypatch, 1, [])
    with pytest.raises(DataError, match=r'^\S+cache: rank 1 does not find .* filesystem they share$'):
        _cached(path, options, tmp_path / 'cache')
