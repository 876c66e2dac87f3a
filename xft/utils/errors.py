"""Errors caused by what the user gave us (a config, a data file, a flag).

Commands catch ``UserError`` and print its message as one line, with no traceback, and
exit non-zero. The message names the file, and the row or line where there is one, and
says what was expected. Anything else that escapes is a bug in xft.
"""


class UserError(Exception):
    """Bad input from the user. Its message is the whole report."""


class ConfigError(UserError):
    """A config file or a --cfg-options entry that cannot be used."""


class DataError(UserError):
    """A data file or row that cannot be used."""
