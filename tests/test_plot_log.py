"""Loss curves: `xft plot-log`, the LossCurveHook on a toy runner, the TensorBoard switch."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from xft.engine import loss_curve
from xft.tools import plot_log
from xft.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def write_run(work_dir, timestamp, rows):
    scalars = work_dir / timestamp / 'vis_data' / 'scalars.json'
    scalars.parent.mkdir(parents=True)
    scalars.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    return scalars


def rows(iterations, loss_start):
    return [{'lr': 1e-4 * i, 'loss': loss_start - 0.1 * i, 'iter': i, 'time': 0.5} for i in iterations]


def test_plot_log_reads_the_newest_run_and_writes_a_png(tmp_path, capsys):
    write_run(tmp_path, '20261129_100000', rows(range(1, 4), 9.0))
    write_run(tmp_path, '20261129_110000', rows(range(1, 6), 5.0))
    assert plot_log.main([str(tmp_path)]) == 0
    png = tmp_path / 'loss_curve.png'
    assert capsys.readouterr().out.strip() == str(png)
    assert png.read_bytes()[:8] == PNG_MAGIC
    newest = loss_curve.read_scalars(loss_curve.find_scalar_files(tmp_path))
    assert loss_curve.series(newest, 'loss') == ([1, 2, 3, 4, 5], pytest.approx([4.9, 4.8, 4.7, 4.6, 4.5]))


def test_all_runs_join_a_resumed_run_with_the_later_row_winning(tmp_path):
    write_run(tmp_path, '20261129_100000', rows(range(1, 7), 9.0))   # crashed after 6
    write_run(tmp_path, '20261129_110000', rows(range(5, 9), 1.0))   # resumed at 4
    joined = loss_curve.read_scalars(loss_curve.find_scalar_files(tmp_path, all_runs=True))
    iterations, losses = loss_curve.series(joined, 'loss')
    assert iterations == list(range(1, 9))
    assert losses[:4] == pytest.approx([8.9, 8.8, 8.7, 8.6]) and losses[4] == pytest.approx(0.5)
    out = tmp_path / 'curves' / 'all.png'
    assert plot_log.main([str(tmp_path), '--all-runs', '--out', str(out), '--keys', 'loss']) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_log_takes_a_scalars_file_too(tmp_path):
    scalars = write_run(tmp_path, 'run', rows(range(1, 3), 2.0))
    assert loss_curve.plot_work_dir(scalars) == scalars.parent / 'loss_curve.png'


@pytest.mark.parametrize('setup, message', [
    (lambda d: None, 'no */vis_data/scalars.json here'),
    (lambda d: write_run(d, 'r', []).write_text('{"loss": 1.0, "iter": 1}\n{broken\n'),
     'scalars.json line 2: invalid JSON'),
    (lambda d: write_run(d, 'r', [{'time': 1.0, 'iter': 1}]), 'none of loss, lr was logged'),
])
def test_plot_log_errors_are_one_line(tmp_path, capsys, setup, message):
    setup(tmp_path)
    assert plot_log.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and message in err and err.startswith('xft plot-log: ')


# --------------------------------------------------------------------------------------
# LossCurveHook on a toy runner
# --------------------------------------------------------------------------------------
class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels, mode='tensor'):
        prediction = self.linear(inputs)
        if mode == 'loss':
            return {'loss': ((prediction.squeeze(-1) - labels) ** 2).mean()}
        return prediction


class ToyDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, index):
        x = torch.tensor([index / 16, 1.0])
        return dict(inputs=x, labels=2 * x[0] + 1)


def toy_runner(work_dir, hooks, logger_interval=1):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Wrapped(BaseModel):
        def __init__(self):
            super().__init__()
            self.toy = ToyModel()

        def forward(self, inputs, labels, mode='tensor'):
            return self.toy(inputs, labels, mode)

    return Runner(
        model=Wrapped(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyDataset(), sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=4, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3)],
        # 4 iterations = one pass over the 16 rows (a second pass costs mmengine's 2 s restart).
        train_cfg=dict(by_epoch=False, max_iters=4), custom_hooks=hooks,
        default_hooks=dict(logger=dict(type='LoggerHook', interval=logger_interval) if logger_interval else None,
                           checkpoint=None),
        experiment_name=f'toy_{work_dir.name}')


def test_loss_curve_hook_writes_the_png_when_training_ends(tmp_path):
    from xft.engine.hooks import LossCurveHook

    runner = toy_runner(tmp_path / 'run', [LossCurveHook()])
    runner.train()
    png = tmp_path / 'run' / 'loss_curve.png'
    assert png.read_bytes()[:8] == PNG_MAGIC
    logged = loss_curve.read_scalars(loss_curve.find_scalar_files(tmp_path / 'run'))
    assert loss_curve.series(logged, 'loss')[0] == [1, 2, 3, 4]


def test_loss_curve_hook_without_logged_iterations_warns_instead_of_failing(tmp_path):
    from xft.engine.hooks import LossCurveHook

    runner = toy_runner(tmp_path / 'quiet', [LossCurveHook(filename='curve.png')], logger_interval=None)
    runner.train()
    assert not (tmp_path / 'quiet' / 'curve.png').exists()
    log = (Path(runner.log_dir) / f'{runner.timestamp}.log').read_text()
    assert 'LossCurveHook: no logged iterations in' in log and 'no loss curve written' in log


# --------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------
def test_tensorboard_backend_without_the_package_is_a_one_line_user_error(tmp_path, monkeypatch):
    import importlib.util

    from mmengine.registry import VISBACKENDS

    from xft.engine.config import user_message
    from xft.engine.hooks import TensorboardBackend

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'tensorboard' else real_find_spec(name, *a))
    with pytest.raises(UserError) as error:
        VISBACKENDS.build(dict(type=TensorboardBackend, save_dir=str(tmp_path)))
    message = user_message(error.value)
    assert message.startswith('use_tensorboard=True needs the tensorboard package: pip install tensorboard')
    assert '\n' not in message


def test_tensorboard_backend_builds_when_the_package_is_there(tmp_path, monkeypatch):
    import importlib.util

    from mmengine.visualization import TensorboardVisBackend

    from xft.engine.hooks import TensorboardBackend

    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: object())
    backend = TensorboardBackend(save_dir=str(tmp_path))
    assert isinstance(backend, TensorboardVisBackend)


def test_use_tensorboard_true_in_a_zoo_config_fails_in_one_line_before_loading_the_model(
        tmp_path, monkeypatch, capsys):
    import importlib.util

    from helpers.zoo import swap_part1
    from xft import cli

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'tensorboard' else real_find_spec(name, *a))
    source = next((REPO / 'configs').rglob('smollm2_135m_instruct_lora_alpaca_e3.py'))
    config = tmp_path / 'tb.py'
    # No such model: the TensorBoard check has to come first to be seen.
    config.write_text(swap_part1(source.read_text(), use_tensorboard=True,
                                 pretrained_model_name_or_path='/nonexistent/model'))
    code = cli.main(['train', str(config), '--work-dir', str(tmp_path / 'w')])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith('xft train: use_tensorboard=True needs the tensorboard package') and err.count('\n') == 1
