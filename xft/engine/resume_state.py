"""The parts of a training run's state that mmengine does not checkpoint, as plain values.

mmengine saves weights, optimizer, schedulers and the iteration; a resumed run then re-seeds
the random generators and drops gradients accumulated inside an unfinished accumulation
window. These functions capture and restore both, and turn mmengine's message-hub objects
into plain types so that a checkpoint loads with the weights-only unpickler (tensors,
numbers, strings, lists, dicts: nothing that runs code when loaded).
"""
import random

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

# Marks a HistoryBuffer stored as a plain dict inside a checkpoint's message hub.
_HISTORY_MARK = '__history_buffer__'


def capture_rng() -> dict:
    """The state of every random generator training may draw from (python, numpy, torch)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'position': int(position),
                  'has_gauss': int(has_gauss), 'cached_gauss': float(cached_gauss)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state['numpy']
    np.random.set_state((numpy_state['kind'], numpy_state['keys'].numpy().astype(np.uint32),
                         numpy_state['position'], numpy_state['has_gauss'], numpy_state['cached_gauss']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def pending_gradients(model) -> dict:
    """{parameter name: gradient} of the trainable parameters that hold one."""
    return {name: param.grad.detach().cpu().clone() for name, param in model.named_parameters()
            if param.requires_grad and param.grad is not None}


def restore_gradients(model, gradients: dict) -> int:
    """Put saved gradients back onto the parameters; the number restored."""
    params = dict(model.named_parameters())
    unknown = sorted(set(gradients) - set(params))
    if unknown:
        raise KeyError(f'saved gradients for parameters the model does not have: {unknown[:3]}')
    for name, grad in gradients.items():
        param = params[name]
        param.grad = grad.to(device=param.device, dtype=param.dtype).clone()
    return len(gradients)


def plain_message_hub(state: dict) -> dict:
    """mmengine's message-hub state with HistoryBuffers as dicts of plain lists.

    >>> state = {'log_scalars': {'train/loss': HistoryBuffer([2.5, 2.0], [1, 1])},
    ...          'runtime_info': {'iter': 2}, 'resumed_keys': {'train/loss': True, 'iter': True}}
    >>> plain_message_hub(state)['log_scalars']['train/loss']
    {'__history_buffer__': True, 'log': [2.5, 2.0], 'count': [1, 1], 'max_length': 1000000}
    """
    scalars = {key: _plain_history(buffer) for key, buffer in state['log_scalars'].items()}
    return {**state, 'log_scalars': scalars, 'runtime_info': _plain_values(state['runtime_info'])}


def message_hub_from_plain(state: dict) -> dict:
    """The inverse of :func:`plain_message_hub` (older checkpoints pass through unchanged)."""
    scalars = {key: _history_from_plain(value) for key, value in state['log_scalars'].items()}
    return {**state, 'log_scalars': scalars}


def _plain_history(buffer):
    if not isinstance(buffer, HistoryBuffer):
        return buffer
    log, count = buffer.data
    return {_HISTORY_MARK: True, 'log': np.asarray(log).tolist(), 'count': np.asarray(count).tolist(),
            'max_length': int(buffer.max_length)}


def _history_from_plain(value):
    if isinstance(value, dict) and value.get(_HISTORY_MARK):
        return HistoryBuffer(value['log'], value['count'], value['max_length'])
    return value


def _plain_values(value):
    """numpy arrays and scalars (runtime info may hold them) as lists and Python numbers."""
    if isinstance(value, dict):
        return type(value)((key, _plain_values(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_values(item) for item in value)
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value
