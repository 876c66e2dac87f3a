"""Loading mmengine checkpoints under torch >= 2.6, where ``torch.load`` is weights-only.

mmengine 0.10.7 calls ``torch.load(path)`` with the default ``weights_only=True`` on new
torch, which refuses the message-hub objects and numpy values that every mmengine
checkpoint holds, so ``--resume`` fails. We register a loader for local paths (mmengine's
own extension point, ``CheckpointLoader.register_scheme``) that keeps the weights-only
unpickler and allows exactly the few extra types mmengine writes. Nothing else unpickles.
"""
import codecs
import os

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from xft.utils.errors import UserError


def _numpy_globals() -> list:
    scalar_types = [np.dtype(name).type for name in ('float64', 'float32', 'int64', 'int32', 'bool')]
    dtype_classes = [type(np.dtype(t)) for t in scalar_types]
    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, *dtype_classes,
            np._core.multiarray.scalar]


def safe_globals() -> list:
    """The non-tensor types an mmengine checkpoint may contain.

    ``HistoryBuffer`` pickles its statistics methods with ``getattr`` and numpy pickles
    raw bytes with ``_codecs.encode``; with only these types on the list, ``getattr``
    reaches attributes of allowed objects only.
    """
    return [HistoryBuffer, getattr, codecs.encode, *_numpy_globals()]


def load_checkpoint_file(filename, map_location='cpu') -> dict:
    """Load an mmengine/xft checkpoint with the weights-only unpickler."""
    filename = os.path.expanduser(str(filename))
    if not os.path.isfile(filename):
        raise UserError(f'{filename}: checkpoint file not found')
    with torch.serialization.safe_globals(safe_globals()):
        return torch.load(filename, map_location=map_location, weights_only=True)


def register_checkpoint_loader() -> None:
    """Make mmengine's local-path loading (resume, load_from) use ``load_checkpoint_file``."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)
