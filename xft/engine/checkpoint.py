"""Loading mmengine checkpoints under torch >= 2.6, where ``torch.load`` is weights-only.

mmengine 0.10.7 calls ``torch.load(path)`` with the default ``weights_only=True`` on new
torch, which refuses the message-hub objects and numpy values that a plain mmengine
checkpoint holds, so ``--resume`` fails. We register a loader for local paths (mmengine's
own extension point, ``CheckpointLoader.register_scheme``) that keeps the weights-only
unpickler.

Checkpoints written by ``xft train`` hold only tensors and plain Python values (the
message hub is stored as lists, see ``xft.engine.resume_state``), so they load with nothing
allowed beyond torch's own list. A checkpoint from plain mmengine (or XTuner) holds
``HistoryBuffer`` objects and numpy arrays: for those, and only when the strict load refuses
them, the few extra types mmengine writes are allowed, and the log says so.
"""
import codecs
import os
import pickle

import numpy as np
import torch
from mmengine.logging import print_log
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from xft.utils.errors import UserError


def _numpy_globals() -> list:
    scalar_types = [np.dtype(name).type for name in ('float64', 'float32', 'int64', 'int32', 'bool')]
    dtype_classes = [type(np.dtype(t)) for t in scalar_types]
    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, *dtype_classes,
            np._core.multiarray.scalar]


def mmengine_globals() -> list:
    """The non-tensor types a plain mmengine checkpoint may contain.

    ``HistoryBuffer`` pickles its statistics methods with ``getattr`` and numpy pickles
    raw bytes with ``_codecs.encode``; with only these types on the list, ``getattr``
    reaches attributes of allowed objects only.
    """
    return [HistoryBuffer, getattr, codecs.encode, *_numpy_globals()]


def load_checkpoint_file(filename, map_location='cpu') -> dict:
    """Load an xft checkpoint with the weights-only unpickler (tensors and plain values only);
    a plain mmengine checkpoint with mmengine's few extra types allowed."""
    filename = os.path.expanduser(str(filename))
    if not os.path.isfile(filename):
        raise UserError(f'{filename}: checkpoint file not found')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        print_log(f'{filename}: not an xft checkpoint (it holds mmengine objects); loading it with '
                  "mmengine's HistoryBuffer and numpy types allowed", logger='current')
    with torch.serialization.safe_globals(mmengine_globals()):
        return torch.load(filename, map_location=map_location, weights_only=True)


def register_checkpoint_loader() -> None:
    """Make mmengine's local-path loading (resume, load_from) use ``load_checkpoint_file``."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)
