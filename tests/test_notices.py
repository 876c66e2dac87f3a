"""Library notices are filtered in one place (xft/tools/notices.py), each one exactly: the same
libraries' other warnings and log lines still come through, and the log file keeps everything."""
import io
import logging
import warnings

import pytest

from xft.tools import notices

# The notices as the libraries word them (seen on these machines, issue 16).
QUIET = [
    (FutureWarning, '`is_gradient_checkpointing` is deprecated and will be removed in v6. Use '
                    '`is_activation_checkpointing` instead.'),
    (FutureWarning, "`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use "
                    "`torch.amp.GradScaler('cuda', args...)` instead."),
    (UserWarning, 'Detected call of `scheduler.step()` before `optimizer.step()`. In PyTorch 1.1.0 '
                  'and later, you should call them in the opposite order'),
]


@pytest.fixture
def quiet():
    with warnings.catch_warnings():  # the filters installed here leave with the test
        notices.quiet_library_notices()
        yield


@pytest.mark.parametrize('category, message', QUIET)
def test_the_library_warnings_are_silenced(quiet, category, message):
    with warnings.catch_warnings(record=True) as shown:
        warnings.warn(message, category)
    assert shown == []


def test_other_warnings_still_show(quiet):
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter('default')
        notices.quiet_library_notices()
        warnings.warn('`something_else` is deprecated', FutureWarning)
    assert len(shown) == 1


def test_the_deepspeed_cpu_line_is_dropped_and_its_other_warnings_kept(quiet):
    logger, stream = logging.getLogger('DeepSpeed'), io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        logger.warning('Setting accelerator to CPU. If you have GPU or other accelerator, we were '
                       'unable to detect it.')
        logger.warning('ZeRO stage 3 needs more memory')
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == 'ZeRO stage 3 needs more memory\n'


def test_the_console_leaves_out_the_environment_config_and_hook_table_the_file_keeps(tmp_path):
    logger = logging.getLogger('xft_test_console')
    logger.propagate = False
    logger.setLevel(logging.INFO)
    console_stream = io.StringIO()
    console = logging.StreamHandler(console_stream)
    log_file = logging.FileHandler(tmp_path / 'run.log')
    for handler in (console, log_file):
        logger.addHandler(handler)
    notices.quiet_console(logger)
    notices.quiet_console(logger)  # once is enough; twice adds nothing
    records = ['\n' + '-' * 60 + '\nSystem environment:\n    Python: 3.11', 'Config:\nlr = 0.0002',
               'Hooks will be executed in the following order:\nbefore_run:',
               '"FileClient" will be deprecated in future.', 'Iter(train) [1/3]  loss: 2.4874']
    for record in records:
        logger.info(record)
    log_file.close()
    assert console_stream.getvalue() == 'Iter(train) [1/3]  loss: 2.4874\n'
    assert (tmp_path / 'run.log').read_text() == ''.join(f'{record}\n' for record in records)
    assert len(console.filters) == 1
