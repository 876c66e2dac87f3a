"""DatasetInfoHook: log how many samples a run trains on and what the first one looks like.

Before training (and before validation/testing) it logs the dataset size and the first
sample decoded, then the part of it that carries loss, so a wrong template or a wrong mask is
visible in the first lines of the log::

    Num train samples 1000
    train example (64 tokens, 12 trained):
    <s><|im_start|>user
    Who are you?<|im_end|>
    <|im_start|>assistant
    I am Lumi.<|im_end|>
    train example, trained text: I am Lumi.<|im_end|>

Config (XTuner's arguments)::

    custom_hooks = [dict(type=DatasetInfoHook, tokenizer=tokenizer)]
"""
from mmengine.hooks import Hook

from xft.registry import build_nested
from xft.utils.constants import IGNORE_INDEX


class DatasetInfoHook(Hook):
    """Log the dataset size and its first sample, decoded.

    Args:
        tokenizer: the tokenizer or its config dict.
        is_intern_repo_dataset: InternLM's pre-tokenized datasets store untrained tokens as
            negative ids; their absolute values are decoded.
    """

    # mmengine's table: HIGHEST 0 ... ABOVE_NORMAL 40, NORMAL 50, ... LOWEST 100; lower runs
    # first. NORMAL (XTuner's, the default): before_train order among hooks does not matter
    # for a log line.
    priority = 'NORMAL'

    def __init__(self, tokenizer, is_intern_repo_dataset=False):
        self.tokenizer = build_nested(dict(tokenizer)) if isinstance(tokenizer, dict) else tokenizer
        self.is_intern_repo_dataset = is_intern_repo_dataset

    def describe(self, dataset, mode):
        """The log lines for ``dataset`` (a list of strings; pure, for tests and tools)."""
        lines = [f'Num {mode} samples {len(dataset)}']
        if len(dataset) == 0:
            return lines
        sample = dataset[0]
        input_ids = list(sample['input_ids'])
        if self.is_intern_repo_dataset:
            input_ids = [abs(token) for token in input_ids]
        labels = list(sample['labels']) if 'labels' in sample else None
        trained = ([token for token in labels if token != IGNORE_INDEX]
                   if labels is not None else None)
        count = f', {len(trained)} trained' if trained is not None else ''
        lines.append(f'{mode} example ({len(input_ids)} tokens{count}):\n'
                     f'{self.tokenizer.decode(input_ids)}')
        if trained is not None:
            lines.append(f'{mode} example, trained text: {self.tokenizer.decode(trained)}')
        return lines

    def _log(self, runner, loop, mode):
        dataloader = getattr(loop, 'dataloader', None)
        if dataloader is None:
            return
        for line in self.describe(dataloader.dataset, mode):
            runner.logger.info(line)

    def before_train(self, runner):
        self._log(runner, runner.train_loop, 'train')

    def before_val(self, runner):
        self._log(runner, runner.val_loop, 'eval')

    def before_test(self, runner):
        self._log(runner, runner.test_loop, 'test')
