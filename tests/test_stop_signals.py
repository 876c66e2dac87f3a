"""SIGTERM and SIGINT save, skip the evaluations and the plot, and exit within seconds.

The evaluation hook here takes 600 s per evaluation (as EvaluateChatHook's 600 new tokens do on a
CPU) from the iteration where it signals its own process; a run that waited for it, before or
after saving, would outlive the test's timeout.
"""
import signal
import time

import pytest

from helpers.newcomer import EXIT_WITHIN_S, tiny_config, train

IMPORTS = ('from helpers.newcomer import SlowEvaluateChatHook\n'
           'from xft.engine.hooks.plot_hook import LossCurveHook\n')


def hooks(signal_at, signal_name):
    return ('\ncustom_hooks = [\n'
            "    dict(type=SlowEvaluateChatHook, tokenizer=tokenizer, evaluation_inputs=['Hi'],\n"
            '         every_n_iters=2, max_new_tokens=4, prompt_template=prompt_template,\n'
            f'         signal_at={signal_at}, signal_name={signal_name!r}),\n'
            '    dict(type=LossCurveHook)]\n')


def run_until_stopped(tmp_path, tiny_llama_dir, signal_at, signal_name):
    config = tiny_config(tmp_path, tiny_llama_dir, imports=IMPORTS, extra=hooks(signal_at, signal_name))
    work_dir = tmp_path / 'run'
    started = time.monotonic()
    result = train(config, '--work-dir', work_dir, '--cfg-options', 'train_cfg.max_iters=6',
                   timeout=EXIT_WITHIN_S)
    return result, work_dir, time.monotonic() - started


def test_sigterm_during_the_evaluation_before_training_stops_at_once(tmp_path, tiny_llama_dir):
    result, work_dir, seconds = run_until_stopped(tmp_path, tiny_llama_dir, 0, 'SIGTERM')
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        'xft train: stopped by SIGTERM before iteration 1; nothing trained')
    assert 'EvaluateChatHook: SIGTERM received; evaluation at iter 0 abandoned' in result.stdout
    assert not list(work_dir.glob('iter_*.pth')) and not (work_dir / 'loss_curve.png').exists()
    assert 'Iter(train)' not in result.stdout
    print(f'stopped {seconds:.0f} s after start')


@pytest.mark.parametrize('signal_name', ['SIGINT', 'SIGTERM'])
def test_a_signal_during_a_periodic_evaluation_saves_skips_the_rest_and_exits(
        tmp_path, tiny_llama_dir, signal_name):
    result, work_dir, seconds = run_until_stopped(tmp_path, tiny_llama_dir, 2, signal_name)
    assert result.returncode == 128 + signal.Signals[signal_name], result.stderr[-2000:]
    checkpoint = work_dir / 'iter_2.pth'
    assert result.stderr.strip().splitlines()[-1] == (
        f'xft train: stopped by {signal_name} after iteration 2; checkpoint {checkpoint}; '
        'continue with --resume auto')
    assert checkpoint.is_file() and not (work_dir / 'iter_3.pth').exists()
    # The evaluation in progress was abandoned; the one after training and the plot were skipped.
    assert f'EvaluateChatHook: {signal_name} received; evaluation at iter 2 abandoned' in result.stdout
    assert 'EvaluateChatHook: skipped at iter 2: the run is stopping' in result.stdout
    answered = sorted(p.name for p in (work_dir / 'eval_outputs').glob('iter_*.txt'))
    assert answered == ['iter_0.txt']
    assert not (work_dir / 'loss_curve.png').exists()
    assert 'no loss curve drawn' in result.stdout
    print(f'stopped {seconds:.0f} s after start')
