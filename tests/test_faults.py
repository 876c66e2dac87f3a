"""Runs that meet real faults: a signal (SIGTERM, SIGINT), a SIGKILL while a checkpoint is
being written, a full disk (a file size limit in the child), a NaN loss from poisoned samples.

The run that meets the fault is a subprocess of tools/train.py on the tiny Llama (the signal,
the kill, the file size limit and the exit status are the things under test); the hooks that
inject the faults live in helpers/faults.py and run inside the training process. A plain
continuation (resume with no fault) runs in this process. ``reference_run`` (tests/conftest.py)
is the uninterrupted reference schedule, trained once."""
import json
import re
import resource
import shutil
from pathlib import Path

import pytest
import torch
from helpers.faults import REFERENCE_OPTIONS, assert_same_curve
from helpers.paths import ALPACA_SUBSET
from helpers.training import (last_checkpoint, last_line, logged_losses, run_train, train_in_process,
                              write_tiny_config)

from xft.engine.checkpoint import load_checkpoint_file
from xft.engine.faults import PARTIAL_PREFIX, atomic_write_text, partial_path, save_failure_message
from xft.engine.nonfinite import FiniteLossGuard, NonFiniteLossError


def test_sigterm_inside_an_accumulation_window_saves_and_resume_auto_continues_the_same_curve(
        tmp_path, tiny_llama_dir, reference_run):
    _, _, reference = reference_run
    config = write_tiny_config(tmp_path, tiny_llama_dir, ALPACA_SUBSET,
                               hooks=[('SendSignalHook', dict(at_iter=5, signum='SIGTERM'))])
    work_dir = tmp_path / 'run'
    stopped = run_train(config, '--work-dir', work_dir, '--cfg-options', *REFERENCE_OPTIONS, expect_rc=143)
    assert last_line(stopped.stderr) == (f'xft train: stopped by SIGTERM after iteration 5; checkpoint '
                                         f'{work_dir}/iter_5.pth; continue with --resume auto')
    assert 'Traceback' not in stopped.stderr
    assert sorted(logged_losses(work_dir)) == [1, 2, 3, 4, 5]
    assert last_checkpoint(work_dir) == str(work_dir / 'iter_5.pth')

    # Iteration 5 is the first half of the third accumulation window of 2 micro-batches.
    state = load_checkpoint_file(work_dir / 'iter_5.pth')['xft_resume_state']
    assert (state['window_position'], state['window_size']) == (1, 2) and len(state['gradients']) == 28

    # The continuation drops the signal hook: the plain config, as a user re-runs it.
    plain = write_tiny_config(tmp_path, tiny_llama_dir, ALPACA_SUBSET, name='plain')
    log = train_in_process(plain, '--work-dir', work_dir, '--resume', '--cfg-options', *REFERENCE_OPTIONS).log
    assert (f'resumed from {work_dir}/iter_5.pth at iteration 5 of 12: weights, optimizer, schedulers, '
            'data position; random generators; the gradients of 1 of 2 micro-batches') in log
    assert_same_curve(logged_losses(work_dir), reference, range(1, 13))


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one_for_resume_auto(
        tmp_path, tiny_llama_dir, reference_run):
    _, _, reference = reference_run
    config = write_tiny_config(tmp_path, tiny_llama_dir, ALPACA_SUBSET,
                               hooks=[('KillWhileSavingHook', dict(at_iter=10))])
    work_dir = tmp_path / 'run'
    run_train(config, '--work-dir', work_dir, '--cfg-options', *REFERENCE_OPTIONS, expect_rc=-9)
    names = sorted(path.name for path in work_dir.iterdir() if path.is_file())
    # Killed during the write: only the hidden partial file of iteration 10 exists.
    assert PARTIAL_PREFIX + 'iter_10.pth' in names and 'iter_10.pth' not in names, names
    assert last_checkpoint(work_dir) == str(work_dir / 'iter_5.pth')
    assert len(load_checkpoint_file(work_dir / 'iter_5.pth')['state_dict']) == 28

    plain = write_tiny_config(tmp_path, tiny_llama_dir, ALPACA_SUBSET, name='plain')
    log = train_in_process(plain, '--work-dir', work_dir, '--resume', '--cfg-options', *REFERENCE_OPTIONS).log
    assert f'Removed unfinished checkpoint writes left by a killed run: {PARTIAL_PREFIX}iter_10.pth' in log
    assert f'resumed from {work_dir}/iter_5.pth at iteration 5 of 12' in log
    assert_same_curve(logged_losses(work_dir), reference, range(6, 13))
    assert not list(work_dir.glob(PARTIAL_PREFIX + '*'))


def test_a_full_disk_during_a_save_gives_one_line_and_keeps_the_last_good_checkpoint(tmp_path, reference_run):
    config, reference_dir, _ = reference_run
    work_dir = tmp_path / 'run'
    shutil.copytree(reference_dir, work_dir)
    atomic_write_text(work_dir / 'last_checkpoint', str(work_dir / 'iter_12.pth'))
    good = (work_dir / 'iter_12.pth').read_bytes()
    # Every file the run writes (logs, dumped config, data cache) stays below this size; a
    # checkpoint does not: the kernel refuses the write (EFBIG), as a full disk would (ENOSPC).
    limit = len(good) - 20_000

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = run_train(config, '--work-dir', work_dir, '--resume', '--cfg-options', *REFERENCE_OPTIONS,
                       'train_cfg.max_iters=15', expect_rc=2, preexec_fn=limit_file_size)
    assert last_line(result.stderr) == (
        f'xft train: {work_dir}/iter_15.pth: checkpoint not saved, no space left on the device (or the file '
        f'size limit was reached): [Errno 27] File too large; the last good checkpoint {work_dir}/iter_12.pth '
        'is intact')
    assert 'Traceback' not in result.stderr
    assert last_checkpoint(work_dir) == str(work_dir / 'iter_12.pth')
    assert (work_dir / 'iter_12.pth').read_bytes() == good
    assert (work_dir / 'iter_5.pth').is_file()  # the rotation deletes only after a successful save
    assert not (work_dir / 'iter_15.pth').exists() and not list(work_dir.glob(PARTIAL_PREFIX + '*'))
    assert sorted(logged_losses(work_dir))[-3:] == [13, 14, 15]


@pytest.fixture
def poisoned_data(tmp_path, shared_data):
    """8 alpaca rows; row 2 carries the marker token ``<pad>`` (id 3; collate pads with id 0)
    that PoisonMarkedSamplesHook poisons. The config's seed (42) orders the rows 6 3 | 0 7 | 2 1
    | 4 5: the marked row comes in iteration 3, after two iterations that train normally."""
    rows = json.loads(ALPACA_SUBSET.read_text())[:8]
    rows[2] = dict(rows[2], instruction='<pad> ' + rows[2]['instruction'])
    path = tmp_path / 'poisoned.json'
    path.write_text(json.dumps(rows))
    return path


def marked_dataset_rows(config, tokenizer_dir) -> list:
    """The indices, in the processed training set, of the rows that hold the marker."""
    from mmengine.config import Config
    from transformers import AutoTokenizer

    from xft.registry import build_nested
    marker = AutoTokenizer.from_pretrained(str(tokenizer_dir)).pad_token_id
    dataset = build_nested(Config.fromfile(str(config)).train_dataloader.dataset)
    return [index for index in range(len(dataset)) if marker in dataset[index]['input_ids']]


MARKER_ID = 3  # <pad> in the tiny tokenizer
NAN_OPTIONS = ('train_cfg.max_iters=8', 'log_processor.window_size=1', 'default_hooks.checkpoint.interval=100')


def test_a_nan_loss_stops_the_run_naming_the_iteration_and_the_sample(tmp_path, tiny_llama_dir, poisoned_data):
    config = write_tiny_config(tmp_path, tiny_llama_dir, poisoned_data,
                               hooks=[('PoisonMarkedSamplesHook', dict(token_id=MARKER_ID))])
    work_dir = tmp_path / 'run'
    result = run_train(config, '--work-dir', work_dir, '--cfg-options', *NAN_OPTIONS, expect_rc=2)
    message = last_line(result.stderr)
    match = re.fullmatch(r'xft train: iteration (\d+): loss is nan; dataset rows \[(\d+)\] give it '
                         r'\(batch of rows \[(\d+), (\d+)\]\)', message)
    assert match, message
    iteration, row = int(match[1]), int(match[2])
    assert row in (int(match[3]), int(match[4]))
    assert [row] == marked_dataset_rows(config, tiny_llama_dir)
    assert 'Traceback' not in result.stderr
    # Stopped before training on it: every logged loss before that iteration is finite.
    losses = logged_losses(work_dir)
    assert iteration == 3 and sorted(losses) == [1, 2]
    assert bool(torch.isfinite(torch.tensor(list(losses.values()))).all())


def test_skip_mode_drops_nan_steps_and_sigint_saves_and_exits(tmp_path, tiny_llama_dir, poisoned_data):
    config = write_tiny_config(tmp_path, tiny_llama_dir, poisoned_data, hooks=[
        ('PoisonMarkedSamplesHook', dict(token_id=MARKER_ID)), ('SendSignalHook', dict(at_iter=6, signum='SIGINT'))])
    work_dir = tmp_path / 'run'
    result = run_train(config, '--work-dir', work_dir, '--cfg-options', *NAN_OPTIONS,
                       'train_cfg.nonfinite_loss=skip', expect_rc=130)
    log = result.stdout + result.stderr
    skipped = re.findall(r'iteration (\d+): loss is nan; dataset rows \[(\d+)\] give it \(batch of rows '
                         r'\[\d+, \d+\]\); skipping its accumulation window', log)
    # 8 rows in batches of 2: the marked row comes once in iterations 1-4.
    assert skipped and int(skipped[0][0]) <= 4, log[-3000:]
    assert last_line(result.stderr) == (f'xft train: stopped by SIGINT after iteration 6; checkpoint '
                                        f'{work_dir}/iter_6.pth; continue with --resume auto')
    weights = load_checkpoint_file(work_dir / 'iter_6.pth')['state_dict']
    assert all(bool(torch.isfinite(tensor).all()) for tensor in weights.values())
    poisoned = {int(iteration) for iteration, _ in skipped}
    losses = logged_losses(work_dir)
    assert sorted(losses) == list(range(1, 7))
    assert all(torch.isfinite(torch.tensor(loss)) for it, loss in losses.items() if it not in poisoned)


def _sgd_guard(policy, accumulation=1):
    from mmengine.optim import OptimWrapper
    weight = torch.nn.Parameter(torch.ones(2))
    wrapper = OptimWrapper(torch.optim.SGD([weight], lr=1.0), accumulative_counts=accumulation)
    wrapper.initialize_count_status(torch.nn.Linear(1, 1), 0, 100)
    return weight, FiniteLossGuard(wrapper, [weight], policy)


def test_guard_stop_refuses_before_backward():
    weight, guard = _sgd_guard('stop')
    with pytest.raises(NonFiniteLossError):
        guard.update_params((weight * float('inf')).sum())
    assert weight.grad is None and weight.tolist() == [1.0, 1.0]


def test_guard_skip_drops_the_whole_accumulation_window_and_keeps_counting():
    weight, guard = _sgd_guard('skip', accumulation=2)
    guard.update_params(weight.sum())                      # window 1, first half: fine
    guard.update_params((weight * float('nan')).sum())     # window 1, second half: NaN
    assert weight.tolist() == [1.0, 1.0] and guard.skipped_windows == 1 and guard._inner_count == 2
    assert weight.grad is None or not bool(weight.grad.abs().sum())
    guard.update_params(weight.sum())                      # window 2 trains normally
    guard.update_params(weight.sum())
    assert weight.tolist() == [0.0, 0.0]


def test_save_failure_message_names_the_cause_and_the_good_checkpoint():
    full = OSError(28, 'No space left on device')
    assert save_failure_message('w/iter_20.pth', full, 'w/iter_10.pth') == (
        'w/iter_20.pth: checkpoint not saved, no space left on the device (or the file size limit was '
        'reached): [Errno 28] No space left on device; the last good checkpoint w/iter_10.pth is intact')
    assert save_failure_message('w/iter_10.pth', PermissionError(13, 'Permission denied'), None).endswith(
        'PermissionError: [Errno 13] Permission denied; no earlier checkpoint exists')
    assert partial_path(Path('w/iter_20.pth')) == Path('w/.partial-iter_20.pth')
