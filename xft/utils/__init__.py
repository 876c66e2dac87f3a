"""Public names configs import from ``xft.utils`` (XTuner's spelling)."""
from .constants import DEFAULT_PAD_TOKEN_INDEX, IGNORE_INDEX
from .templates import PROMPT_TEMPLATE, SYSTEM_TEMPLATE

__all__ = ['IGNORE_INDEX', 'DEFAULT_PAD_TOKEN_INDEX', 'PROMPT_TEMPLATE', 'SYSTEM_TEMPLATE']
