"""See a run: the loss-curve PNG at the end of training, and TensorBoard with a clear error.

``LossCurveHook`` draws ``<work_dir>/loss_curve.png`` (loss and learning rate per logged
iteration) from the scalars mmengine's ``LocalVisBackend`` wrote, when training ends (not when a
signal stopped it: that run has seconds left); the same picture on demand is
``xft plot-log WORK_DIR``.

``TensorboardBackend`` is mmengine's ``TensorboardVisBackend`` that checks for the
``tensorboard`` package when it is built, so a config that turns TensorBoard on without it
stops with one line before any model is loaded, instead of a traceback from inside mmengine.

Config::

    custom_hooks = [..., dict(type=LossCurveHook)]
    visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend),
                                                     dict(type=TensorboardBackend)])
"""
import importlib.util
from pathlib import Path

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.visualization import TensorboardVisBackend

from xft.engine.cfg_options import resolve_type
from xft.engine.hooks.preemption_hook import stop_requested
from xft.engine.loss_curve import plot_scalars, read_scalars
from xft.utils.errors import UserError


class LossCurveHook(Hook):
    """Write ``loss_curve.png`` into the work dir after training.

    Args:
        filename: the PNG's name inside the work dir.
        keys: logged scalars to plot, one panel each.
    """

    # mmengine's table: ... NORMAL 50, BELOW_NORMAL 60, LOW 70, VERY_LOW 90, LOWEST 100; lower
    # runs first. LOWEST: after the LoggerHook (BELOW_NORMAL) has written the last iteration.
    priority = 'LOWEST'

    def __init__(self, filename='loss_curve.png', keys=('loss', 'lr')):
        self.filename = filename
        self.keys = tuple(keys)

    def after_train(self, runner):
        if not is_main_process():
            return
        if stop_requested(runner):  # a stopping run keeps its grace period for the checkpoint
            print_log(f'LossCurveHook: the run is stopping; no loss curve drawn (`xft plot-log '
                      f'{runner.work_dir}` draws it)', logger='current')
            return
        scalars = Path(runner.log_dir) / 'vis_data' / 'scalars.json'
        # A resumed run starts a new log dir; its curve continues the earlier runs'.
        resumed = bool(runner.cfg.get('resume')) if getattr(runner, 'cfg', None) else False
        files = sorted(Path(runner.work_dir).glob('*/vis_data/scalars.json')) if resumed else [scalars]
        files = [path for path in files if path.is_file()]
        if not files:
            print_log(f'LossCurveHook: no logged iterations in {scalars}; no loss curve written',
                      logger='current')
            return
        try:
            path = plot_scalars(read_scalars(files), Path(runner.work_dir) / self.filename,
                                self.keys, title=Path(runner.work_dir).name)
        except UserError as error:
            print_log(f'LossCurveHook: {error}; no loss curve written', logger='current')
            return
        print_log(f'Loss curve: {path}', logger='current')


class TensorboardBackend(TensorboardVisBackend):
    """mmengine's TensorboardVisBackend, refusing at once (one line) when tensorboard is missing."""

    def __init__(self, save_dir, **kwargs):
        require_tensorboard()
        super().__init__(save_dir, **kwargs)


def require_tensorboard() -> None:
    if importlib.util.find_spec('tensorboard') is None:
        raise UserError('use_tensorboard=True needs the tensorboard package: '
                        'pip install tensorboard -c requirements/constraints.txt '
                        '(or set use_tensorboard = False)')


def check_visualizer(cfg) -> None:
    """Before anything is built: a config that asks for TensorBoard has the package."""
    visualizer = cfg.get('visualizer')
    backends = visualizer.get('vis_backends') or [] if isinstance(visualizer, dict) else []
    for backend in backends:
        kind = resolve_type(backend.get('type')) if isinstance(backend, dict) else None
        if isinstance(kind, type) and issubclass(kind, TensorboardBackend):
            require_tensorboard()
