"""XTuner's InternLM-repo data: folders of pre-tokenized ``.bin`` files or of OpenAI-message
``.json`` files, each file packed on its own (``xtuner.dataset.intern_repo``'s names).

A config (XTuner's ``internlm2_7b_w_tokenized_dataset``)::

    train_dataset = dict(type=build_packed_dataset,
                         dataset_cfg=dict(type=load_intern_repo_tokenized_dataset, folder=dataset_folder,
                                          data_order_path=None, min_length=0, file_type='.bin'),
                         packed_length=max_length, seed=1024)
    train_dataloader = dict(..., dataset=train_dataset, sampler=dict(type=InternRepoSampler, seed=1024),
                            collate_fn=dict(type=default_collate_fn, use_varlen_attn=use_varlen_attn))

Formats:

- ``.bin`` (InternLM's tokenized format): one JSON object per line, ``{"tokens": [...]}``; a token
  id written negative is in the input but not trained (its label is -100), as is id 0.
  The ``.bin.meta`` offset files InternLM writes beside them are not needed here.
- ``.json`` (untokenized): one JSON list of OpenAI messages per line, encoded with
  ``openai_map_fn`` and the config's template by ``process_hf_dataset``.

``data_order_path`` names a text file listing the files (relative to ``folder``) one per line;
without it every file of the type under ``folder`` is read, in sorted path order.

Packing differs from XTuner's on purpose, as everywhere in xft: every token is kept (XTuner
dropped each file's last partial row) and samples never attend to each other within a row.
"""
import json
import os
from pathlib import Path

import datasets
import numpy as np
from mmengine.logging import print_log

from xft.registry import build_nested
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError, DataError

from .load import ORIGIN
from .map_fns import openai_map_fn
from .packing import pack_dataset
from .pipeline import process_hf_dataset, with_length


def load_intern_repo_tokenized_dataset(folder, min_length=0, data_order_path=None, file_type='.bin'):
    """One dataset (``input_ids``, ``labels``, ``length``) per tokenized file under ``folder``;
    samples shorter than ``min_length`` tokens are left out, and files left empty skipped."""
    loaded = []
    for path in data_files(folder, file_type, data_order_path):
        samples = read_tokens_file(path, min_length)
        print_log(f'[xft data] {path}: {len(samples["input_ids"])} samples', logger='current')
        if samples['input_ids']:
            loaded.append(datasets.Dataset.from_dict(samples))
    return loaded


def read_tokens_file(path, min_length=0) -> dict:
    """``{'input_ids', 'labels', 'length'}`` columns of one ``{"tokens": [...]}``-per-line file.

    A negative id (and 0) is input without loss; ids are stored as their absolute values.
    """
    columns = {'input_ids': [], 'labels': [], 'length': []}
    with open(path, encoding='utf-8') as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            tokens = _tokens_of(line, f'{path} line {number}')
            if len(tokens) < min_length:
                continue
            columns['input_ids'].append([abs(token) for token in tokens])
            columns['labels'].append([token if token > 0 else IGNORE_INDEX for token in tokens])
            columns['length'].append(len(tokens))
    return columns


def _tokens_of(line, where):
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f'{where}: not a JSON object ({error.msg})') from None
    tokens = row.get('tokens') if isinstance(row, dict) else None
    if not isinstance(tokens, list) or not tokens or not all(
            isinstance(token, int) and not isinstance(token, bool) for token in tokens):
        raise DataError(f'{where}: expected {{"tokens": [token ids, negative where untrained]}}, got '
                        f'{line.strip()[:60]}')
    return tokens


def load_intern_repo_untokenized_dataset(processed_dataset_dict_path=None, folder=None, tokenizer=None,
                                         max_length=None, template_map_fn=None, data_order_path=None,
                                         file_type='.json'):
    """One encoded dataset per file of OpenAI messages under ``folder`` (or the datasets of a
    saved ``DatasetDict`` whose keys are the files' numbers, as XTuner's processing tool saves)."""
    if processed_dataset_dict_path is not None:
        saved = datasets.load_from_disk(str(processed_dataset_dict_path))
        return [saved[key] for key in sorted(saved, key=int)]
    missing = [name for name, value in (('folder', folder), ('tokenizer', tokenizer), ('max_length', max_length))
               if value is None]
    if missing:
        raise ConfigError('load_intern_repo_untokenized_dataset needs processed_dataset_dict_path, or '
                          f'folder, tokenizer and max_length (missing: {", ".join(missing)})')
    encoded = []
    for path in data_files(folder, file_type, data_order_path):
        rows = messages_file(path)
        data = process_hf_dataset(rows, tokenizer=tokenizer, max_length=max_length, dataset_map_fn=openai_map_fn,
                                  template_map_fn=template_map_fn, remove_unused_columns=True,
                                  pack_to_max_length=False)
        if len(data):
            encoded.append(data)
    return encoded


def messages_file(path) -> datasets.Dataset:
    """A ``messages`` column from one file of OpenAI message lists, a list per line, each row
    named by its file and line."""
    messages, origins = [], []
    with open(path, encoding='utf-8') as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f'{path} line {number}'
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f'{where}: not JSON ({error.msg})') from None
            if not isinstance(row, list):
                raise DataError(f'{where}: expected a list of messages '
                                f'([{{"role": ..., "content": ...}}, ...]), got {type(row).__name__}')
            messages.append(row)
            origins.append(where)
    if not messages:
        raise DataError(f'{path}: no messages in the file')
    return datasets.Dataset.from_dict({'messages': messages, ORIGIN: origins})


def build_packed_dataset(dataset_cfg, packed_length=8192, seed=1024):
    """Each dataset of ``dataset_cfg`` (a config dict building a list, or the list) shuffled with
    ``seed`` and packed into rows of ``packed_length`` tokens on its own, then all concatenated."""
    built = build_nested(dict(dataset_cfg)) if isinstance(dataset_cfg, dict) else dataset_cfg
    built = built if isinstance(built, list) else [built]
    if not built:
        raise DataError('build_packed_dataset: the datasets hold no sample to train on')
    packed = []
    for data in built:
        order = np.random.RandomState(seed).permutation(len(data))  # XTuner's shuffle per file
        packed.append(pack_dataset(data.select(order), packed_length))
    return with_length(datasets.concatenate_datasets(packed))


def data_files(folder, file_type, data_order_path=None):
    """The files to read: ``data_order_path``'s list (relative to ``folder``), else every
    ``*file_type`` under ``folder`` in sorted path order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f'{folder}: no such data folder')
    if data_order_path is not None:
        listed = []
        for number, name in enumerate(Path(data_order_path).read_text(encoding='utf-8').splitlines(), start=1):
            if name.strip():
                path = folder / name.strip()
                if not path.is_file():
                    raise ConfigError(f'{data_order_path} line {number}: {path} does not exist')
                listed.append(path)
        return listed
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found += [Path(root) / name for name in sorted(files) if name.endswith(file_type)]
    if not found:
        raise ConfigError(f'{folder}: no {file_type} files in it')
    return found
