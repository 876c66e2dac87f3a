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

``read_checkpoint_state_dict`` gives the model state dict a conversion needs, from an
``iter_N.pth`` file (memory-mapped) or a DeepSpeed checkpoint folder (through DeepSpeed's
``zero_to_fp32``).
"""
import codecs
import os
import pickle
from pathlib import Path

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


# What torch.load raises on a file that is not a whole checkpoint (a text file, a copy cut short):
# the zip reader's RuntimeError/OSError, the legacy unpickler's KeyError/EOFError/IndexError ...
_UNREADABLE = (RuntimeError, OSError, EOFError, KeyError, IndexError, ValueError, TypeError,
               AttributeError, pickle.UnpicklingError)


def unreadable_checkpoint(filename, error) -> UserError:
    reason = (str(error).strip().splitlines() or [''])[0][:160]
    return UserError(f'{filename}: not a readable checkpoint ({type(error).__name__}: {reason}); '
                     'expected a .pth file written by xft train (is it cut short, or another kind '
                     'of file?)')


def load_checkpoint_file(filename, map_location='cpu') -> dict:
    """Load an xft checkpoint with the weights-only unpickler (tensors and plain values only);
    a plain mmengine checkpoint with mmengine's few extra types allowed; anything else is one
    UserError line."""
    filename = os.path.expanduser(str(filename))
    if not os.path.isfile(filename):
        raise UserError(f'{filename}: checkpoint file not found')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass  # objects the strict list refuses: perhaps a plain mmengine checkpoint
    except _UNREADABLE as error:
        raise unreadable_checkpoint(filename, error) from None
    try:
        with torch.serialization.safe_globals(mmengine_globals()):
            checkpoint = torch.load(filename, map_location=map_location, weights_only=True)
    except _UNREADABLE as error:
        raise unreadable_checkpoint(filename, error) from None
    print_log(f'{filename}: not an xft checkpoint (it holds mmengine objects); loaded it with '
              "mmengine's HistoryBuffer and numpy types allowed", logger='current')
    return checkpoint


def register_checkpoint_loader() -> None:
    """Make mmengine's local-path loading (resume, load_from) use ``load_checkpoint_file``."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)


def _load_mapped(path):
    """Load a checkpoint memory-mapped: only the tensors a conversion touches are read.

    A full fine-tune's checkpoint also holds the optimizer state (AdamW: twice the weights);
    mapped, it is never read into memory. Measured on a 1.8 GB SmolLM2-135M full checkpoint
    with AdamW state, the conversion's peak RSS fell from 2.26 GB to 1.32 GB.
    """
    try:
        with torch.serialization.safe_globals(mmengine_globals()):
            return torch.load(str(path), map_location='cpu', weights_only=True, mmap=True)
    except _UNREADABLE:  # not a zip-format file (no mapping), or not a checkpoint: say which
        return load_checkpoint_file(path)


def read_deepspeed_state_dict(folder):
    """The float32 trained weights of a DeepSpeed checkpoint folder.

    mmengine's FlexibleRunner with DeepSpeed (``xft train CONFIG --deepspeed ...``) saves
    ``work_dir/iter_N.pth/`` as a folder (``mp_rank_00_model_states.pt`` plus the ZeRO optimizer
    partitions). DeepSpeed's own ``zero_to_fp32`` consolidates the float32 master weights from
    the partitions, for ZeRO 1, 2 and 3 alike.
    """
    folder = Path(folder)
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        raise UserError(f'{folder}: a DeepSpeed checkpoint folder; reading it needs deepspeed '
                        '(pip install deepspeed)') from None
    if not any(folder.glob('*model_states.pt')):
        raise UserError(f'{folder}: a folder without DeepSpeed model states '
                        '(*model_states.pt); expected an iter_N.pth file or DeepSpeed folder')
    return get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name,
                                                    exclude_frozen_parameters=True)


def read_checkpoint_state_dict(pth_path):
    """The model state dict of an mmengine checkpoint file or DeepSpeed checkpoint folder."""
    path = Path(pth_path)
    if path.is_dir():
        return read_deepspeed_state_dict(path)
    if not path.is_file():
        raise UserError(f'{pth_path}: checkpoint file not found')
    checkpoint = _load_mapped(path)
    if isinstance(checkpoint, dict) and 'state_dict' in checkpoint:
        return checkpoint['state_dict']
    if isinstance(checkpoint, dict) and checkpoint and all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise UserError(f'{pth_path}: expected an mmengine checkpoint with a `state_dict` entry')
