"""Exact resume: what an xft checkpoint holds beyond mmengine's, that it loads without
unpickling objects, and that without it a resume inside an accumulation window would change
the curve (the control for the equality tests in test_faults.py).

``reference_run`` (tests/conftest.py) is the uninterrupted reference schedule, trained once."""
import random

import numpy as np
import pytest
import torch
from helpers.faults import REFERENCE_OPTIONS
from helpers.training import logged_losses, train_in_process
from mmengine.logging import HistoryBuffer

from xft.engine.checkpoint import load_checkpoint_file
from xft.engine.hooks.exact_resume_hook import STATE_KEY
from xft.engine.resume_state import capture_rng, message_hub_from_plain, plain_message_hub, restore_rng


def test_a_checkpoint_holds_rng_and_the_open_accumulation_window_in_plain_types(reference_run):
    _, work_dir, _ = reference_run
    # torch's own weights-only list, nothing added: no HistoryBuffer, numpy or getattr inside.
    checkpoint = torch.load(work_dir / 'iter_5.pth', weights_only=True)
    state = checkpoint[STATE_KEY]
    assert (state['window_position'], state['window_size']) == (1, 2)
    assert sorted(state['gradients']) == sorted(checkpoint['state_dict'])
    assert all(bool(grad.abs().sum()) for grad in state['gradients'].values() if grad.dim())
    assert len(state['rng']) == 1 and set(state['rng'][0]) == {'python', 'numpy', 'torch'}
    loss_history = checkpoint['message_hub']['log_scalars']['train/loss']
    assert loss_history['__history_buffer__'] and len(loss_history['log']) == 5
    # Iteration 10 closes a window: no gradients to carry.
    at_boundary = torch.load(work_dir / 'iter_10.pth', weights_only=True)[STATE_KEY]
    assert at_boundary['window_position'] == 0 and at_boundary['gradients'] == {}


def test_without_the_saved_state_a_resume_inside_a_window_changes_the_curve(tmp_path, reference_run):
    """The control: the same resume from a checkpoint stripped of RNG and partial gradients
    (what mmengine alone saves) says so in the log and drifts from the uninterrupted curve."""
    config, work_dir, reference = reference_run
    checkpoint = load_checkpoint_file(work_dir / 'iter_5.pth')
    del checkpoint[STATE_KEY]
    stripped = tmp_path / 'iter_5_mmengine_only.pth'
    torch.save(checkpoint, stripped)
    resumed_dir = tmp_path / 'resumed'
    run = train_in_process(config, '--work-dir', resumed_dir, '--resume', stripped, '--cfg-options', *REFERENCE_OPTIONS)
    assert 'no RNG or accumulation state in this checkpoint: an older format' in run.log
    resumed = logged_losses(resumed_dir)
    assert sorted(resumed) == list(range(6, 13))
    drift = max(abs(resumed[i] - reference[i]) for i in range(6, 13))
    assert drift > 1e-4, f'the control did not drift ({drift}): the equality tests would prove nothing'


def test_message_hub_round_trips_through_plain_types():
    state = {'log_scalars': {'train/loss': HistoryBuffer([2.5, 2.0, 1.5], [1, 1, 2], max_length=50)},
             'runtime_info': {'iter': 3, 'scores': np.array([0.5, 0.25]), 'best': np.float64(0.5)},
             'resumed_keys': {'train/loss': True, 'iter': True}}
    plain = plain_message_hub(state)
    assert plain['runtime_info'] == {'iter': 3, 'scores': [0.5, 0.25], 'best': 0.5}
    back = message_hub_from_plain(plain)['log_scalars']['train/loss']
    assert isinstance(back, HistoryBuffer) and back.max_length == 50
    log, count = back.data
    assert log.tolist() == [2.5, 2.0, 1.5] and count.tolist() == [1, 1, 2] and back.current() == 1.5


def test_rng_state_round_trips():
    state = capture_rng()
    drawn = (random.random(), float(np.random.rand()), float(torch.rand(())))
    for _ in range(3):
        random.random(), np.random.rand(), torch.rand(5)
    restore_rng(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == drawn


def test_plain_mmengine_checkpoints_still_load(tmp_path):
    legacy = tmp_path / 'mmengine.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'seed': np.int64(3)},
                'message_hub': {'log_scalars': {'loss': HistoryBuffer([1.0], [1])}}}, legacy)
    with pytest.raises(Exception):
        torch.load(legacy, weights_only=True)
    loaded = load_checkpoint_file(legacy)
    assert loaded['message_hub']['log_scalars']['loss'].current() == 1.0
