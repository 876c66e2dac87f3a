"""Reading environment flags: one parser, so every switch accepts the same spellings."""
import os

TRUE_VALUES = ('1', 'true', 'yes', 'on')


def env_flag(name: str, default: bool = False) -> bool:
    """A boolean environment variable, parsed explicitly: '1', 'true', 'yes', 'on' (any case) are
    true, any other value is false, and unset or blank gives ``default``.

    >>> os.environ['XFT_DOCTEST_FLAG'] = ' Yes '
    >>> env_flag('XFT_DOCTEST_FLAG'), env_flag('XFT_DOCTEST_UNSET', default=True)
    (True, True)
    """
    value = os.environ.get(name)
    if value is None or value.strip() == '':
        return default
    return value.strip().lower() in TRUE_VALUES
