"""The pack step: encoded samples -> rows of exactly ``max_length`` tokens (the last may be shorter).

Samples are laid end to end and the stream is cut every ``max_length`` tokens, so no token is
dropped (XTuner's packer lost the tail of each worker's shard). A sample cut by a row boundary
continues at the start of the next row as its own piece.

Each row keeps its sample boundaries in ``cumulative_len`` ([0, end of piece 1, ..., row length]),
from which the collate fn derives position ids that restart at every piece and the attention
side (``xft.model.packed_attention``) keeps attention inside each piece.

The label of the first token of every piece is set to IGNORE_INDEX: in a causal LM that label is
predicted from the previous token, which belongs to another sample. With it ignored, the loss
of a packed row equals the token-weighted loss of its samples run one by one.
"""
import datasets
import numpy as np
import pyarrow as pa

from xft.utils.constants import IGNORE_INDEX

PACKED_COLUMNS = ('input_ids', 'labels', 'cumulative_len', 'length')


def pack_dataset(dataset, max_length):
    """Pack an encoded dataset (columns ``input_ids``, ``labels``) into a new dataset."""
    dataset = dataset.flatten_indices() if dataset._indices is not None else dataset
    ids = _flat(dataset.data.column('input_ids'))
    labels = _flat(dataset.data.column('labels'))
    return datasets.Dataset(pa.table(pack_arrays(ids, labels, max_length)))


def pack_arrays(ids, labels, max_length):
    """Pack flattened samples.

    ``ids`` and ``labels`` are ``(offsets, values)`` pairs (Arrow list layout): sample ``i`` is
    ``values[offsets[i]:offsets[i + 1]]``. Returns Arrow arrays for ``PACKED_COLUMNS``.
    """
    offsets, id_values = ids
    label_offsets, label_values = labels
    if not np.array_equal(offsets, label_offsets):
        raise ValueError('input_ids and labels differ in length in some sample')
    label_values = label_values.copy()
    starts = offsets[:-1][np.diff(offsets) > 0]
    total = int(offsets[-1])
    row_starts = np.arange(0, total, max_length, dtype=np.int64)
    # A piece starts at every sample start and at every row start.
    piece_starts = np.union1d(starts, row_starts)
    label_values[piece_starts] = IGNORE_INDEX

    row_ends = np.minimum(row_starts + max_length, total)
    row_offsets = np.append(row_starts, total)
    # cumulative_len of row r: piece starts inside the row, relative to it, then the row length.
    first_piece = np.searchsorted(piece_starts, row_starts)
    last_piece = np.searchsorted(piece_starts, row_ends)
    cumulative = []
    cumulative_offsets = [0]
    for row, (lo, hi) in enumerate(zip(first_piece, last_piece)):
        relative = piece_starts[lo:hi] - row_starts[row]
        cumulative.append(np.append(relative, row_ends[row] - row_starts[row]))
        cumulative_offsets.append(cumulative_offsets[-1] + hi - lo + 1)
    cumulative_values = np.concatenate(cumulative).astype(np.int32) if cumulative else \
        np.zeros(0, np.int32)
    row_offsets32 = pa.array(row_offsets.astype(np.int32))
    return {
        'input_ids': pa.ListArray.from_arrays(row_offsets32, pa.array(id_values)),
        'labels': pa.ListArray.from_arrays(row_offsets32, pa.array(label_values)),
        'cumulative_len': pa.ListArray.from_arrays(
            pa.array(np.asarray(cumulative_offsets, np.int32)), pa.array(cumulative_values)),
        'length': pa.array((row_ends - row_starts).astype(np.int64)),
    }


def _flat(column):
    """(offsets, values) numpy arrays of an Arrow list column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(array, pa.ChunkedArray):  # combine_chunks of an empty column
        array = pa.array([], type=pa.list_(pa.int64()))
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)
    # A sliced array's offsets need not start at 0.
    values = values[offsets[0]:offsets[-1]]
    return offsets - offsets[0], values
