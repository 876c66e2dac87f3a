"""``xft train CONFIG --max-iters N``: a short trial run of a config, in one flag.

A trial run answers "does this config train, and how does the loss start?" in minutes. It is the
config's own run cut at N iterations (the same data, model, optimizer and learning-rate schedule,
so the first N steps are exactly those of the full run), with what a short run needs:

- ``train_cfg``: ``max_iters=N`` instead of ``max_epochs`` (the two exclude each other);
- the loss and learning rate of every iteration in the log and in ``vis_data/scalars.json``
  (logger interval 1, window 1), so ``loss_curve.png`` is drawn at the end and
  ``xft plot-log WORK_DIR`` works;
- no ``EvaluateChatHook``: its answers (600 new tokens each, minutes on a CPU, before the first
  iteration) say nothing after a few steps;
- no validation loop (``val_cfg``, e.g. MMLU's thousands of five-shot prompts, which the loop
  runs at the last iteration).

The checkpoint hook saves the last iteration, so ``xft convert`` can be tried on the result.
"""
from mmengine.logging import print_log

from xft.engine.cfg_options import resolve_type
from xft.utils.errors import ConfigError

LONG_EVALUATION_HOOKS = ('EvaluateChatHook',)
LOSS_CURVE_HOOK = 'LossCurveHook'
LOSS_CURVE_TYPE = 'xft.engine.hooks.plot_hook.LossCurveHook'


def make_trial_run(cfg, max_iters: int) -> None:
    """Adapt a loaded config, in place, to a trial run of ``max_iters`` iterations."""
    if max_iters < 1:
        raise ConfigError(f'--max-iters: expected a positive number of iterations, got {max_iters}')
    # Edited in place: a copy through dict() would build the lazily imported types, which the
    # config can then no longer print (mmengine logs and dumps it).
    if cfg.get('train_cfg') is None:
        cfg.train_cfg = dict(type='xft.engine.runner.TrainLoop')
    cfg.train_cfg.pop('max_epochs', None)
    cfg.train_cfg['max_iters'] = max_iters
    _log_every_iteration(cfg)
    skipped = _drop_long_evaluations(cfg) + _drop_validation(cfg)
    _draw_loss_curve(cfg)
    print_log(f'trial run: {max_iters} iterations, each logged'
              + (f'; {", ".join(skipped)} skipped' if skipped else ''), logger='current')


def _log_every_iteration(cfg) -> None:
    hooks = cfg.get('default_hooks') or {}
    logger = hooks.get('logger')
    if isinstance(logger, dict):
        logger['interval'] = 1
    if cfg.get('log_processor') is None:
        cfg.log_processor = dict()
    cfg.log_processor['window_size'] = 1  # each logged loss is that iteration's own, not a mean


def _hook_name(hook) -> str:
    kind = hook.get('type') if isinstance(hook, dict) else type(hook)
    if isinstance(kind, str):
        return kind.split('.')[-1]
    kind = resolve_type(kind) if kind is not None else None
    return getattr(kind, '__name__', '')


def _drop_long_evaluations(cfg) -> list:
    hooks = list(cfg.get('custom_hooks') or [])
    kept = [hook for hook in hooks if _hook_name(hook) not in LONG_EVALUATION_HOOKS]
    cfg.custom_hooks = kept
    return sorted({_hook_name(hook) for hook in hooks} - {_hook_name(hook) for hook in kept})


def _drop_validation(cfg) -> list:
    """mmengine wants the three val entries all set or all None."""
    if cfg.get('val_cfg') is None:
        return []
    cfg.val_cfg, cfg.val_dataloader, cfg.val_evaluator = None, None, None
    return ['the validation loop']


def _draw_loss_curve(cfg) -> None:
    """A LossCurveHook, and the LocalVisBackend whose scalars.json it reads."""
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(_hook_name(hook) == LOSS_CURVE_HOOK for hook in hooks):
        # A dotted name, not the class: the config is printed and dumped as Python.
        hooks.append(dict(type=LOSS_CURVE_TYPE))
        cfg.custom_hooks = hooks
    visualizer = cfg.get('visualizer')
    if not isinstance(visualizer, dict):
        return  # None: mmengine's default visualizer writes scalars.json
    backends = list(visualizer.get('vis_backends') or [])
    if not any(_hook_name(backend) == 'LocalVisBackend' for backend in backends):
        visualizer['vis_backends'] = [dict(type='LocalVisBackend'), *backends]
