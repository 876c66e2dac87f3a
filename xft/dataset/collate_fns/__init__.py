"""The collate step: a list of rows -> the batch a model's ``forward(data)`` takes.

One module per collate fn, as in XTuner (so ``from xft.dataset.collate_fns.default_collate_fn
import default_collate_fn`` works as XTuner's configs write it): ``default_collate_fn`` for SFT
rows, ``preference_collate_fn`` for preference pairs, ``mmlu_collate_fn`` for MMLU evaluation rows.
"""
from .default_collate_fn import default_collate_fn
from .mmlu_collate_fn import mmlu_collate_fn
from .preference_collate_fn import preference_collate_fn

__all__ = ['default_collate_fn', 'mmlu_collate_fn', 'preference_collate_fn']
