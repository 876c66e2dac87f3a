"""The load step: a file, a list of files, a folder or a hub name -> a ``datasets.Dataset``.

Local JSON / JSONL / TXT files are parsed here rather than by ``datasets``' builders so that a bad
file is reported as one line naming the file and the line (``data.jsonl line 18: invalid JSON``),
and so that a ``.jsonl`` file that really holds one JSON array (the MedQA2019 example) loads too.
A JSONL line that is a bare list is read as ``{'messages': [...]}`` (XTuner's openai_sft.jsonl).

Every loader returns a ``datasets.Dataset`` whose ``ORIGIN`` column names the file and line (or
row) each row came from, both counted from 1 (``data.json row 1`` is the first object of the
array, as ``data.jsonl line 1`` is the first line): the origin travels with the row through mapping, sampling and dropping,
so a later step that fails on a row names it (``data.json row 17: ...``). The encode step drops
the column.
"""
import json
from pathlib import Path

import datasets

from xft.utils.hub import HubMissing, hub_offline, offline_reason, probe_hub  # noqa: F401 (hub_offline: for callers)
from xft.utils.errors import ConfigError, DataError

JSON_SUFFIXES = ('.json', '.jsonl')
TEXT_SUFFIXES = ('.txt',)
PARQUET_SUFFIXES = ('.parquet',)
CSV_SUFFIXES = ('.csv',)
DATA_SUFFIXES = JSON_SUFFIXES + TEXT_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES
# datasets' builder names a config may pass as load_dataset(path=..., data_files=...).
LOCAL_BUILDERS = ('json', 'text', 'parquet', 'csv')
# The column naming where each row came from ('data.jsonl line 18', 'dataset row 3').
ORIGIN = '_xft_origin'


def load_source(spec, split='train'):
    """Load what a config's ``dataset=`` names, with an ``ORIGIN`` column (module docstring)."""
    if isinstance(spec, datasets.DatasetDict):
        return _whole(_pick_split(spec, split, 'the dataset'), 'dataset')
    if isinstance(spec, datasets.Dataset):
        return _whole(spec, 'dataset')
    if isinstance(spec, (str, Path)):
        return load_path(spec, split)
    if isinstance(spec, (list, tuple)):
        return load_files([Path(p) for p in spec])
    if isinstance(spec, dict) and 'type' in spec:
        return _load_config_entry(spec, split)
    raise ConfigError(f'dataset must be a path, a list of paths, a datasets.Dataset or a config '
                      f'dict with type=, got {type(spec).__name__}')


def load_path(path, split='train'):
    """A local file or folder, or else a hub dataset name."""
    path = Path(path).expanduser()
    if path.is_dir():
        return load_files(_data_files_in(path))
    if path.is_file():
        return load_files([path])
    return load_hub(str(path), split)


def load_files(paths):
    """Rows of several local files, in order, as one dataset."""
    if not paths:
        raise DataError('no data files given')
    rows, origins = [], []
    for path in paths:
        file_rows, file_origins = read_rows(path)
        rows.extend(file_rows)
        origins.extend(file_origins)
    if not rows:
        raise DataError(f'{_names(paths)}: no rows')
    return _rows_to_dataset(rows, origins)


def read_rows(path):
    """(rows, origin of each row) of one local file; raise DataError naming file and line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES or suffix in CSV_SUFFIXES:
        reader = datasets.Dataset.from_parquet if suffix in PARQUET_SUFFIXES else \
            datasets.Dataset.from_csv
        try:
            table = reader(str(path))
        except Exception as error:  # pyarrow raises many types for a broken file
            raise DataError(f'{path}: cannot read {suffix[1:]} ({error})') from None
        rows = table.to_list()
        return rows, _numbered(path, 'row', len(rows))
    if suffix not in JSON_SUFFIXES + TEXT_SUFFIXES:
        raise DataError(f'{path}: unsupported file type {suffix!r}; expected one of '
                        f'{", ".join(DATA_SUFFIXES)}')
    text = _read_utf8(path)
    if suffix in TEXT_SUFFIXES:
        lines = text.splitlines()
        return [{'text': line} for line in lines], _numbered(path, 'line', len(lines))
    stripped = text.lstrip()
    if suffix == '.json' and stripped.startswith('{') and '\n' in stripped.rstrip():
        # A pretty-printed single object is neither an array of rows nor JSON lines.
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            raise DataError(f'{path}: holds one JSON object; expected a JSON array of rows '
                            '([{...}, {...}]) or one JSON object per line')
    if stripped.startswith('['):
        try:
            return _json_array_rows(path, text)
        except DataError:
            # One JSON list per line (XTuner's openai_sft.jsonl) also starts with '['.
            if suffix != '.jsonl':
                raise
    return _json_lines_rows(path, text)


def load_hub(name, split='train', **kwargs):
    """A hub dataset; when the hub is off or cannot be reached, one line at once instead of
    datasets' ~50 s of retries (``xft.utils.hub``: one quick probe, mirrors and proxies apply)."""
    offline = offline_reason()
    if offline:
        raise DataError(_unreachable(name, offline))
    try:
        reason = probe_hub(name, repo_type='dataset')
    except HubMissing as error:
        raise DataError(f'dataset {name!r} is not a local file or folder, and {error}') from None
    if reason is not None:
        raise DataError(_unreachable(name, reason))
    try:
        loaded = datasets.load_dataset(name, **kwargs)
    except ConnectionError as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(_unreachable(name, reason)) from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(loaded, split, f'dataset {name!r}')
    return _whole(loaded, f'dataset {name!r}')


def _unreachable(name, why):
    return (f'dataset {name!r} is not a local file or folder and the Hugging Face hub cannot be '
            f'reached ({why}); download it, or point the config at a local file (PART 1 data_path, '
            'or --cfg-options data_path=FILE)')


def _load_config_entry(spec, split):
    """``dict(type=load_dataset, path=..., data_files=...)`` and any other builder entry."""
    from xft.registry import build_nested

    if spec['type'] is datasets.load_dataset or spec['type'] == 'load_dataset':
        kwargs = {key: value for key, value in spec.items() if key != 'type'}
        path = kwargs.pop('path', None)
        data_files = kwargs.pop('data_files', None)
        if path in LOCAL_BUILDERS and data_files is not None:
            return load_files(_flatten_data_files(data_files, split))
        if path is not None and Path(path).expanduser().exists():
            return load_path(path, split)
        if path is None:
            raise ConfigError('dataset=dict(type=load_dataset, ...) needs path=')
        if data_files is not None:
            kwargs['data_files'] = data_files
        return load_hub(path, split, **kwargs)
    built = build_nested(dict(spec))
    return load_source(built, split)


def _flatten_data_files(data_files, split):
    if isinstance(data_files, dict):
        if split not in data_files:
            raise ConfigError(f'data_files has no split {split!r} (has {sorted(data_files)})')
        data_files = data_files[split]
    if isinstance(data_files, (str, Path)):
        data_files = [data_files]
    files = []
    for item in data_files:
        item = Path(item).expanduser()
        if item.is_dir():
            files.extend(_data_files_in(item))
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f'{item}: no such data file')
    return files


def _data_files_in(folder):
    files = sorted(p for p in folder.rglob('*') if p.is_file()
                   and p.suffix.lower() in DATA_SUFFIXES and not p.name.startswith('.'))
    if not files:
        raise DataError(f'{folder}: no data files ({", ".join(DATA_SUFFIXES)}) in this folder')
    return files


def _read_utf8(path):
    data = path.read_bytes()
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b'\n') + 1
        raise DataError(f'{path} line {line}: not UTF-8 text (byte offset {error.start}); '
                        're-save the file as UTF-8') from None


def _json_array_rows(path, text):
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f'{path} line {error.lineno}: invalid JSON ({error.msg}, column '
                        f'{error.colno})') from None
    if not isinstance(rows, list):
        raise DataError(f'{path}: expected a JSON array of rows')
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f'{path} row {number}: expected a JSON object, got '
                            f'{type(row).__name__}')
    return rows, _numbered(path, 'row', len(rows))


def _json_lines_rows(path, text):
    rows, origins = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f'{path} line {number}: invalid JSON ({error.msg}, column '
                            f'{error.colno})') from None
        if isinstance(row, list):
            row = {'messages': row}
        if not isinstance(row, dict):
            raise DataError(f'{path} line {number}: expected a JSON object, got '
                            f'{type(row).__name__}')
        rows.append(row)
        origins.append(f'{path} line {number}')
    return rows, origins


def _rows_to_dataset(rows, origins):
    _check_top_level_types(rows, origins)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    columns = {key: [row.get(key) for row in rows] for key in keys}
    columns[ORIGIN] = origins
    try:
        return datasets.Dataset.from_dict(columns)
    except Exception as error:  # pyarrow.ArrowInvalid / ArrowTypeError on mixed nested types
        raise DataError(f'{origins[0].rsplit(" ", 2)[0]}: rows disagree on the type of a nested '
                        f'field ({error})') from None


def _check_top_level_types(rows, origins):
    seen = {}
    for row, origin in zip(rows, origins):
        for key, value in row.items():
            if value is None:
                continue
            kind = _kind(value)
            first = seen.setdefault(key, (kind, origin))
            if first[0] != kind:
                raise DataError(f'{origin}: field {key!r} is {kind}, but {first[1]} has '
                                f'{first[0]}')


def _kind(value):
    if isinstance(value, bool):
        return 'bool'
    if isinstance(value, (int, float)):
        return 'number'
    return type(value).__name__


def _whole(dataset, name):
    """A dataset given whole (a hub set, a datasets.Dataset): its rows are named by index.
    One already carrying origins (loaded here before) keeps them."""
    if ORIGIN in dataset.column_names:
        return dataset
    return dataset.add_column(ORIGIN, _numbered(name, 'row', len(dataset)))


def _numbered(name, unit, count):
    """'data.json row 1', 'data.json row 2', ...: origins count from 1, like lines."""
    return [f'{name} {unit} {number}' for number in range(1, count + 1)]


def _pick_split(dataset_dict, split, name):
    if split not in dataset_dict:
        raise ConfigError(f'{name} has no split {split!r} (has {sorted(dataset_dict)})')
    return dataset_dict[split]


def _names(paths):
    return ', '.join(str(p) for p in paths[:3]) + (' ...' if len(paths) > 3 else '')

