"""Reading fields out of a raw row, with one-line errors that name the map fn and the fields.

A map fn declares the fields it reads once, in ``@register_map_fn(fields=..., alternative=...)``;
each entry is a field name, optionally followed by a note for people ('input (optional)',
"description ('Name: text')", 'messages [{role, content}]'). Error messages name the fields
(``expected_fields``); ``xft list-dataset-format`` shows them with their notes
(``describe_fields``).
"""
import re

from xft.utils.errors import DataError

# A declared entry is the field's name, then (after a space, '[' or '(') a note for people.
_NAME_END = re.compile(r'[\s\[(]')


def field_name(entry: str) -> str:
    """'input' for 'input (optional)'.

    >>> field_name('messages [{role, content}]')
    'messages'
    """
    return _NAME_END.split(entry, maxsplit=1)[0]


def expected_fields(map_fn) -> str:
    """The field names a map fn reads, as its errors quote them.

    >>> from xft.dataset.map_fns import code_alpaca_map_fn
    >>> expected_fields(code_alpaca_map_fn)
    "'prompt', 'completion' (or 'instruction', 'input', 'output')"
    """
    def quoted(entries):
        return ', '.join(repr(field_name(entry)) for entry in entries)
    text = quoted(getattr(map_fn, 'fields', ()))
    alternative = getattr(map_fn, 'alternative_fields', ())
    return f'{text} (or {quoted(alternative)})' if alternative else text


def describe_fields(map_fn) -> str:
    """The fields with their notes, as ``xft list-dataset-format`` prints them.

    >>> from xft.dataset.map_fns import medical_map_fn
    >>> describe_fields(medical_map_fn)
    'instruction, input (optional), output; or conversations (ShareGPT)'
    """
    text = ', '.join(getattr(map_fn, 'fields', ()))
    alternative = getattr(map_fn, 'alternative_fields', ())
    return f'{text}; or {", ".join(alternative)}' if alternative else text


def require_text(row, key, map_fn, default=None, expected=None):
    """Return ``row[key]`` as a string, or raise DataError naming what ``map_fn`` expects.

    The message lists every field the map fn reads (``expected``, by default its declared
    fields), so a misnamed column is obvious. A missing field (absent, or None after Arrow
    filled it in) falls back to ``default`` when one is given; otherwise it is an error.
    """
    value = row.get(key) if isinstance(row, dict) else None
    if value is None:
        if default is not None:
            return default
        raise _missing(row, key, map_fn, expected)
    if not isinstance(value, str):
        raise DataError(
            f'{map_fn.__name__}: field {key!r} is {type(value).__name__}, expected a string')
    return value


def require_list(row, key, map_fn, expected=None):
    """Return ``row[key]`` as a non-empty list, or raise DataError."""
    value = row.get(key) if isinstance(row, dict) else None
    if value is None:
        raise _missing(row, key, map_fn, expected)
    if not isinstance(value, list):
        raise DataError(
            f'{map_fn.__name__}: field {key!r} is {type(value).__name__}, expected a list')
    if not value:
        raise DataError(f'{map_fn.__name__}: field {key!r} is an empty conversation')
    return value


def _missing(row, key, map_fn, expected):
    """The error for a missing field. A row of a file whose other rows have the field holds it as
    None (Arrow gives every row every column): only the fields with a value are "present"."""
    if isinstance(row, dict):
        present = ', '.join(repr(k) for k, v in row.items() if v is not None) or 'no fields'
    else:
        present = type(row).__name__
    return DataError(f'{map_fn.__name__} expects fields {expected or expected_fields(map_fn)}; '
                     f'field {key!r} is missing (row has {present})')
