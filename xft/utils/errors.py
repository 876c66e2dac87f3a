"""Errors caused by what the user gave us (a config, a data file, a flag).

Commands catch ``UserError`` and print its message as one line, with no traceback, and
exit 2 (``xft.tools.command`` holds the convention). The message names the file, and the row
or line where there is one, and says what was expected; a misspelt name gets the closest known
one (``did_you_mean``). Anything else that escapes is a bug in xft.
"""
import difflib


class UserError(Exception):
    """Bad input from the user. Its message is the whole report."""


class ConfigError(UserError):
    """A config file or a --cfg-options entry that cannot be used."""


class DataError(UserError):
    """A data file or row that cannot be used."""


def did_you_mean(name, candidates) -> str:
    """'; did you mean X?' with the closest candidate, or '' when none is close.

    >>> did_you_mean('chatmll', ['chatml', 'default', 'llama3_chat'])
    "; did you mean 'chatml'?"
    >>> did_you_mean('rr', ['r', 'lora_alpha']), did_you_mean('zzz', ['r'])
    ("; did you mean 'r'?", '')
    """
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f'; did you mean {close[0]!r}?' if close else ''
