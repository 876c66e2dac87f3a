"""Map functions: one raw row in, ``{'conversation': [{'system', 'input', 'output'}, ...]}`` out
(preference map fns: ``{'prompt', 'chosen', 'rejected'}``, see ``preference.py``).

Each is registered where it is defined, ``@register_map_fn(fields=...)``, in
``xft.registry.MAP_FUNC`` under its own name, with the fields of a raw row it reads (a
misnamed field raises DataError naming them; ``xft list-dataset-format`` prints them). Importing
the modules below registers them; every registered one is importable from here under its own
name (``from xft.dataset.map_fns import alpaca_map_fn``), with no list to keep in step.
See README.md in this folder for adding one.
"""
from xft.registry import MAP_FUNC

# Importing a module registers its map fns; this order is the order they are listed in.
from . import instruction, chat, pretrain, preference  # noqa: F401,I001
from .template import TemplateMapFn, template_map_fn, template_map_fn_factory


def registered_map_fns() -> dict:
    """name -> map fn, for every map fn the modules of this package registered (in order)."""
    return {name: fn for name, fn in MAP_FUNC.module_dict.items()
            if getattr(fn, '__module__', '').startswith(__name__ + '.')}


globals().update(registered_map_fns())

__all__ = [*registered_map_fns(), 'registered_map_fns',
           'template_map_fn', 'template_map_fn_factory', 'TemplateMapFn']
