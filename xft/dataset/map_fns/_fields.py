"""Reading fields out of a raw row, with one-line errors that name the map fn and the fields."""
from xft.utils.errors import DataError


def require_text(row, key, map_fn_name, expected, default=None):
    """Return ``row[key]`` as a string, or raise DataError naming what ``map_fn_name`` expects.

    ``expected`` lists every field the map fn reads, so a misnamed column is obvious from the
    message. A missing field (absent, or None after Arrow filled it in) falls back to ``default``
    when one is given; otherwise it is an error.
    """
    value = row.get(key) if isinstance(row, dict) else None
    if value is None:
        if default is not None:
            return default
        present = ', '.join(repr(k) for k in row) if isinstance(row, dict) else type(row).__name__
        raise DataError(
            f"{map_fn_name} expects fields {expected}; field {key!r} is missing "
            f"(row has {present})")
    if not isinstance(value, str):
        raise DataError(
            f'{map_fn_name}: field {key!r} is {type(value).__name__}, expected a string')
    return value


def require_list(row, key, map_fn_name, expected):
    """Return ``row[key]`` as a non-empty list, or raise DataError."""
    value = row.get(key) if isinstance(row, dict) else None
    if value is None:
        present = ', '.join(repr(k) for k in row) if isinstance(row, dict) else type(row).__name__
        raise DataError(
            f"{map_fn_name} expects fields {expected}; field {key!r} is missing "
            f"(row has {present})")
    if not isinstance(value, list):
        raise DataError(
            f'{map_fn_name}: field {key!r} is {type(value).__name__}, expected a list')
    if not value:
        raise DataError(f'{map_fn_name}: field {key!r} is an empty conversation')
    return value
