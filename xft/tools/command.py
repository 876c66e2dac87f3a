"""How every command ends: the exit codes and the one error line, the same for every verb.

=====  ===================================================================================
code   meaning
=====  ===================================================================================
0      done
1      the command ran and its answer is "no" (``list-cfg`` matched nothing, ``demo``'s
       checks failed)
2      bad input (a ``UserError``): one line ``xft VERB: <file/row/key>: <what was expected>``
       on stderr, no traceback, nothing written half
130    interrupted (Ctrl-C where nothing is saved)
128+N  ``xft train`` stopped by signal N after saving a checkpoint (143 for SIGTERM, 130 for
       SIGINT); its last line names the checkpoint to resume from
=====  ===================================================================================

Each verb's ``main`` wraps its work in ``run_command('VERB', work, args)``; ``python tools/X.py``
and ``xft X`` therefore print the same line. Anything else that escapes is a bug in xft and
keeps its traceback.
"""
import signal
import sys

from xft.utils.errors import UserError

EXIT_OK = 0
EXIT_NO = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT


def exit_code_for_signal(name: str) -> int:
    """128 + the signal's number, as a shell reports a process killed by it.

    >>> exit_code_for_signal('SIGTERM')
    143
    """
    return 128 + signal.Signals[name].value


def error_line(verb: str, message: str) -> str:
    """``xft VERB: message``, cut to its first line."""
    first = (message.strip().splitlines() or [''])[0]
    return f'xft {verb}: {first}' if verb else f'xft: {first}'


def fail(verb: str, message: str, code: int = EXIT_USER_ERROR, quiet: bool = False) -> int:
    if not quiet:
        print(error_line(verb, message), file=sys.stderr, flush=True)
    return code


def run_command(verb: str, work, *args, quiet: bool = False) -> int:
    """``work(*args)`` with the convention above: its int result (None is 0), a UserError as
    one line and 2, Ctrl-C as one line and 130. ``quiet``: the code without the line (the
    other ranks of a distributed run, where rank 0 says it)."""
    try:
        result = work(*args)
    except UserError as error:
        from xft.engine.config import user_message
        return fail(verb, user_message(error), quiet=quiet)
    except KeyboardInterrupt:
        return fail(verb, 'interrupted', EXIT_INTERRUPTED, quiet=quiet)
    return EXIT_OK if result is None else int(result)
