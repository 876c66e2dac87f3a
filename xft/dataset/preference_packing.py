"""Packing preference pairs: several whole pairs per row, never a pair cut in two.

A pair (chosen sequence, rejected sequence) is only useful whole: its two log-probabilities are
compared. So unlike SFT packing (``packing.py``), which cuts the token stream every
``max_length`` tokens, pairs are placed whole, in order, into rows of at most
``max_packed_length`` tokens: a row is closed when the next pair does not fit (XTuner's
``PackedDatasetWrapper`` does the same). ``max_packed_length`` must hold the longest possible
pair, two sequences of ``max_length``, so no pair is ever dropped; the last row is kept.

Each row keeps every sequence's boundaries in ``cumulative_len``, from which the model's
attention keeps each sequence to itself (``xft.model.packed_attention``), and the collate fn
numbers the sequences (``collate_fns/preference_collate_fn.py``).
"""
import datasets
import numpy as np
import pyarrow as pa

from .packing import _flat

PACKED_PAIR_COLUMNS = ('input_ids', 'labels', 'cumulative_len', 'length')


def row_bounds(lengths, max_packed_length):
    """Start index of each row in the sequence of pairs, then the pair count (next fit).

    >>> row_bounds([3, 4, 2, 5, 1], 7)
    [0, 2, 4, 5]
    """
    bounds, used = [0], 0
    for index, length in enumerate(lengths):
        if used and used + length > max_packed_length:
            bounds.append(index)
            used = 0
        used += int(length)
    bounds.append(len(lengths))
    return bounds if lengths else [0]


def pack_pairs(dataset, max_packed_length):
    """Pack encoded pairs (columns of ``PACKED_PAIR_COLUMNS``) into a new dataset."""
    dataset = dataset.flatten_indices() if dataset._indices is not None else dataset
    table = dataset.data
    offsets, id_values = _flat(table.column('input_ids'))
    _, label_values = _flat(table.column('labels'))
    bound_offsets, bound_values = _flat(table.column('cumulative_len'))
    lengths = np.diff(offsets)
    rows = np.asarray(row_bounds(lengths.tolist(), max_packed_length), dtype=np.int64)
    row_offsets = offsets[rows]
    # cumulative_len of a row: every pair's inner boundaries shifted by where the pair starts in
    # the row, then the row's length.
    cumulative, cumulative_offsets = [], [0]
    for start, end in zip(rows[:-1], rows[1:]):
        pieces = [bound_values[bound_offsets[i]:bound_offsets[i + 1] - 1] + (offsets[i] - offsets[start])
                  for i in range(start, end)]
        row = np.concatenate(pieces + [np.asarray([offsets[end] - offsets[start]])])
        cumulative.append(row)
        cumulative_offsets.append(cumulative_offsets[-1] + len(row))
    values = np.concatenate(cumulative).astype(np.int32) if cumulative else np.zeros(0, np.int32)
    row_offsets32 = pa.array(row_offsets.astype(np.int32))
    return datasets.Dataset(pa.table({
        'input_ids': pa.ListArray.from_arrays(row_offsets32, pa.array(id_values)),
        'labels': pa.ListArray.from_arrays(row_offsets32, pa.array(label_values)),
        'cumulative_len': pa.ListArray.from_arrays(
            pa.array(np.asarray(cumulative_offsets, np.int32)), pa.array(values)),
        'length': pa.array(np.diff(row_offsets).astype(np.int64)),
    }))
