"""Config -> tools/train.py -> mmengine Runner, end to end on a tiny random Llama.

Each run is a subprocess, as a user runs it: mmengine keeps loggers and visualizers as
process-wide singletons, so two runs in one process would share their logs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xft.engine.checkpoint import load_checkpoint_file

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / 'tests' / 'configs' / 'tiny_sft.py'
METHODS = {'lora': ('lora', 'None'), 'qlora': ('lora', 'quantization_config'), 'full': ('None', 'None')}


def write_config(tmp_path, model_dir, data_file, method):
    lora, quantization = METHODS[method]
    text = (TEMPLATE.read_text().replace('@MODEL@', str(model_dir)).replace('@DATA@', str(data_file))
            .replace('@LORA@', lora).replace('@QUANTIZATION@', quantization))
    path = tmp_path / f'tiny_{method}.py'
    path.write_text(text)
    return path


def run_train(*args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1')
    result = subprocess.run([sys.executable, str(REPO / 'tools' / 'train.py'), *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f'train exited {result.returncode}:\n{result.stderr[-3000:]}')
    return result


def logged_losses(work_dir):
    """{iteration: loss} from the newest run's scalars.json in ``work_dir``."""
    runs = sorted(p for p in Path(work_dir).iterdir() if (p / 'vis_data' / 'scalars.json').is_file())
    lines = (runs[-1] / 'vis_data' / 'scalars.json').read_text().splitlines()
    return {row['iter']: row['loss'] for row in map(json.loads, lines) if 'loss' in row}


@pytest.fixture(scope='module')
def alpaca_file(shared_data):
    return shared_data / 'alpaca' / 'alpaca_data_subset.json'


@pytest.mark.parametrize('method', ['lora', 'qlora', 'full'])
def test_train_20_iterations_then_resume_at_10_continues_the_same_curve(
        tmp_path, tiny_llama_dir, alpaca_file, method):
    config = write_config(tmp_path, tiny_llama_dir, alpaca_file, method)
    work_dir = tmp_path / 'run'
    run_train(config, '--work-dir', work_dir)
    losses = logged_losses(work_dir)
    assert sorted(losses) == list(range(1, 21))
    first, last = [losses[i] for i in range(1, 6)], [losses[i] for i in range(16, 21)]
    assert sum(last) < sum(first), f'loss did not fall: {losses}'

    # The checkpoint holds exactly the trainable weights.
    state = load_checkpoint_file(work_dir / 'iter_10.pth')['state_dict']
    if method == 'full':
        assert len(state) == 21 and 'llm.lm_head.weight' in state
    else:
        assert len(state) == 28 and all('.lora_A.' in k or '.lora_B.' in k for k in state)
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    resumed_dir = tmp_path / 'resumed'
    resumed_dir.mkdir()
    run_train(config, '--work-dir', resumed_dir, '--resume', work_dir / 'iter_10.pth')
    resumed = logged_losses(resumed_dir)
    assert sorted(resumed) == list(range(11, 21))
    for iteration in range(11, 21):
        assert resumed[iteration] == pytest.approx(losses[iteration], abs=1e-5), iteration


def test_resume_auto_picks_the_newest_checkpoint_and_the_dumped_config_reruns(
        tmp_path, tiny_llama_dir, alpaca_file):
    config = write_config(tmp_path, tiny_llama_dir, alpaca_file, 'lora')
    work_dir = tmp_path / 'run'
    run_train(config, '--work-dir', work_dir, '--cfg-options', 'train_cfg.max_iters=10')
    resumed = run_train(config, '--work-dir', work_dir, '--resume', '--cfg-options', 'train_cfg.max_iters=12')
    assert 'Resuming at iteration 10 of 12' in resumed.stdout + resumed.stderr
    assert (work_dir / 'iter_12.pth').is_file()

    # The config mmengine dumped into the work dir loads and trains again.
    dumped = work_dir / config.name
    again = tmp_path / 'again'
    run_train(dumped, '--work-dir', again, '--cfg-options', 'train_cfg.max_iters=2', 'resume=False',
              'load_from=None')
    assert sorted(logged_losses(again)) == [1, 2]


def test_epochs_become_iterations(tmp_path, tiny_llama_dir, alpaca_file):
    config = write_config(tmp_path, tiny_llama_dir, alpaca_file, 'lora')
    work_dir = tmp_path / 'run'
    # 64 samples, batch 2 -> 32 iterations per epoch; a quarter epoch is 8 iterations.
    result = run_train(config, '--work-dir', work_dir, '--cfg-options', 'train_cfg.max_iters=None',
                       'train_cfg.max_epochs=0.25', 'train_dataloader.dataset.max_dataset_length=64')
    assert '0.25 epoch(s) of 32 iterations = 8 iterations' in result.stdout + result.stderr
    assert sorted(logged_losses(work_dir)) == list(range(1, 9))


def test_bad_config_gives_one_line_and_a_nonzero_exit(tmp_path):
    result = run_train(tmp_path / 'no_such_config.py', check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count('\n') == 0, result.stderr
    assert 'no_such_config.py: no such config file' in result.stderr
    assert 'Traceback' not in result.stderr


def test_the_internlm_7b_qlora_oasst1_config_trains_on_local_files(tmp_path, tiny_llama_dir, shared_data):
    """The mission's example config, unedited, with --cfg-options pointing at local files."""
    model = str(tiny_llama_dir)
    work_dir = tmp_path / 'internlm'
    result = run_train(
        REPO / 'configs' / 'internlm_7b_qlora_oasst1.py', '--work-dir', work_dir, '--cfg-options',
        f'model.llm.pretrained_model_name_or_path={model}',
        f'tokenizer.pretrained_model_name_or_path={model}',
        f'train_dataloader.dataset.tokenizer.pretrained_model_name_or_path={model}',
        f'custom_hooks.0.tokenizer.pretrained_model_name_or_path={model}',
        f'custom_hooks.1.tokenizer.pretrained_model_name_or_path={model}',
        'custom_hooks.1.max_new_tokens=4',
        f'train_dataloader.dataset.dataset.path={shared_data / "oasst1_guanaco"}',
        'train_dataloader.dataset.max_dataset_length=120', 'train_dataloader.dataset.max_length=256',
        'train_cfg.max_epochs=None', 'train_cfg.max_iters=3', 'optim_wrapper.accumulative_counts=1',
        'default_hooks.logger.interval=1')
    output = result.stdout + result.stderr
    assert 'QLoRA fine-tuning' in output
    assert 'packed into' in output
    assert sorted(logged_losses(work_dir)) == [1, 2, 3]
    assert (work_dir / 'iter_3.pth').is_file()
