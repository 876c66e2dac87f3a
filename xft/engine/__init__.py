"""The training engine: hooks, the train loop, checkpoints, devices.

XTuner's configs also import their hooks from the package itself
(``from xtuner.engine import DatasetInfoHook, ...``); those names resolve on first use, so
importing ``xft.engine.checkpoint`` alone stays light.
"""
_HOOKS = ('DatasetInfoHook', 'EvaluateChatHook', 'ThroughputHook', 'VarlenAttnArgsToMessageHubHook',
          'HFCheckpointHook')


def __getattr__(name):
    if name in _HOOKS:
        from . import hooks
        return getattr(hooks, name)
    if name == 'TrainLoop':
        from .runner import TrainLoop
        return TrainLoop
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
