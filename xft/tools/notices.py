"""Library notices that are not the user's business: filtered here, in one place, for every command.

A newcomer's console should show what xft does (progress, the loss, one-line errors), not what
the libraries underneath say about themselves. Each entry below names a notice seen on these
machines and why it is noise. ``--verbose`` (``quiet_library_notices(verbose=True)``) installs
none of it.

- Python warnings: transformers' ``is_gradient_checkpointing`` rename and mmengine's deprecated
  ``torch.cuda.amp.GradScaler`` call (FutureWarnings about the libraries' own code), and torch's
  "``scheduler.step()`` before ``optimizer.step()``", which under gradient accumulation is the
  intended order (the scheduler counts iterations, the optimizer steps once per window).
- Library loggers: bitsandbytes 0.50 on CPUs with avx512bf16 warns at import that an optional
  hub kernel package (``kernels``) is missing; DeepSpeed, imported by mmengine, announces on
  stdout that it fell back to the CPU accelerator.
- mmengine's console (``quiet_console``, attached by ``xft train`` to the Runner's logger): the
  environment report and the whole config (both stay in the run's log file), the 80-line hook
  table, the SyncBatchNorm and dataset-metainfo remarks, and the FileClient deprecations.
"""
import logging
import re
import warnings

# (category, message regex) of Python warnings; the regex matches the start of the message.
QUIET_WARNINGS = (
    (FutureWarning, r'`is_gradient_checkpointing` is deprecated'),
    (FutureWarning, r'.*GradScaler\(args\.\.\.\)` is deprecated'),
    (UserWarning, r'Detected call of `(lr_)?scheduler\.step\(\)` before `optimizer\.step\(\)`'),
)

# Loggers raised to ERROR: everything they say below that is a notice.
QUIET_LOGGERS = ('bitsandbytes.backends.cpu.ops',)

# (logger name, message regex) dropped from loggers that also say useful things.
QUIET_LOGGER_MESSAGES = (
    ('DeepSpeed', r'Setting accelerator to CPU'),
)

# Records of mmengine's logger kept out of the console (its log file keeps them).
QUIET_CONSOLE_MESSAGES = (
    r'\n-+\nSystem environment:',
    r'Config:\n',
    r'Hooks will be executed in the following order',
    r'Distributed training is not used, all SyncBatchNorm',
    r'Dataset \w+ has no metainfo',
    r'"FileClient" will be deprecated',
    r'"HardDiskBackend" is the alias',
)


class MessageFilter(logging.Filter):
    """Drops the records whose message starts with one of ``patterns`` (regexes)."""

    def __init__(self, patterns):
        super().__init__()
        self.pattern = re.compile('|'.join(f'(?:{p})' for p in patterns))

    def filter(self, record) -> bool:
        return self.pattern.match(record.getMessage()) is None


def quiet_library_notices(verbose: bool = False) -> None:
    """Silence the notices above; first thing in a command's ``main``, before heavy imports
    (the DeepSpeed and bitsandbytes notices are emitted at import)."""
    if verbose:
        return
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings('ignore', message=message, category=category)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name, message in QUIET_LOGGER_MESSAGES:
        _add_once(logging.getLogger(name), MessageFilter([message]))


def quiet_console(logger) -> None:
    """Keep ``QUIET_CONSOLE_MESSAGES`` off ``logger``'s console handlers; file handlers still
    get every record, so the run's log file holds the environment and the config."""
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            _add_once(handler, MessageFilter(QUIET_CONSOLE_MESSAGES))


def _add_once(filterer, new_filter) -> None:
    if not any(isinstance(f, MessageFilter) and f.pattern.pattern == new_filter.pattern.pattern
               for f in filterer.filters):
        filterer.addFilter(new_filter)
