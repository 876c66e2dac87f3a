"""The training loop configs name as ``train_cfg = dict(type=TrainLoop, max_epochs=...)``."""
import logging

from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop

from xft.utils.errors import ConfigError


class _EndlessBatches:
    """Batches from a dataloader forever, starting a new epoch when one ends.

    mmengine's own iterator sleeps 2 s at every epoch wrap; small data sets wrap often,
    so we restart the iterator without sleeping. The sampler's epoch is advanced first so
    that a shuffling sampler draws a new order each epoch, exactly as mmengine does.
    """

    def __init__(self, dataloader):
        self._dataloader = dataloader
        self._epoch = 0
        self._iterator = iter(dataloader)

    def _set_sampler_epoch(self):
        sampler = getattr(self._dataloader, 'sampler', None)
        if not hasattr(sampler, 'set_epoch'):
            sampler = getattr(getattr(self._dataloader, 'batch_sampler', None), 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(self._epoch)

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._iterator)
        except StopIteration:
            self._epoch += 1
            self._set_sampler_epoch()
            self._iterator = iter(self._dataloader)
            return next(self._iterator)


class TrainLoop(IterBasedTrainLoop):
    """Iteration-based training that also accepts ``max_epochs`` (XTuner's TrainLoop).

    ``max_epochs`` becomes ``max_epochs * len(dataloader)`` iterations, so checkpoints,
    logging and schedulers count iterations whichever way the config is written.
    """

    def __init__(self, runner, dataloader, max_iters=None, max_epochs=None, **kwargs):
        if (max_iters is None) == (max_epochs is None):
            raise ConfigError('train_cfg: give exactly one of max_iters or max_epochs')
        if max_epochs is not None:
            runner_dataloader = runner.build_dataloader(dataloader) if isinstance(dataloader, dict) else dataloader
            iters_per_epoch = len(runner_dataloader)
            if iters_per_epoch == 0:
                raise ConfigError('train_dataloader: the dataset is empty, nothing to train on')
            max_iters = int(max_epochs * iters_per_epoch)
            print_log(f'TrainLoop: {max_epochs} epoch(s) of {iters_per_epoch} iterations = {max_iters} iterations',
                      logger='current')
            dataloader = runner_dataloader
        super().__init__(runner=runner, dataloader=dataloader, max_iters=max_iters, **kwargs)
        self.dataloader_iterator = _EndlessBatches(self.dataloader)

    def run(self):
        if self._iter > 0:
            print_log(f'Resuming at iteration {self._iter} of {self._max_iters}', logger='current',
                      level=logging.INFO)
        return super().run()
