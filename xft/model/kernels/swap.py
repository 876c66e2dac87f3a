"""Replace submodules of one model instance by their fused counterparts, and undo it.

Nothing here patches a class or a function: `swap_modules` walks one model, picks the
submodules that are instances of the given types, asks `build` for a replacement and sets it
on the parent. It returns what it replaced, so `restore_modules` can put the originals back
(peft's merge, for example, only knows its own layer classes).
"""
from typing import Callable, List, Optional, Tuple, Type, Union

from torch import nn

Replaced = List[Tuple[str, nn.Module]]


def swap_modules(model: nn.Module,
                 types: Union[Type[nn.Module], Tuple[Type[nn.Module], ...]],
                 build: Callable[[nn.Module], Optional[nn.Module]]) -> Replaced:
    """Swap every submodule that is an instance of `types` for `build(module)`.

    `build` may return None to leave a module as it is (a layer the fused op can't take).
    Returns `[(qualified_name, original_module), ...]`.

    >>> m = nn.Sequential(nn.ReLU(), nn.Linear(2, 2))
    >>> swap_modules(m, nn.ReLU, lambda old: nn.GELU())
    [('0', ReLU())]
    >>> m[0]
    GELU(approximate='none')
    """
    replaced: Replaced = []
    # Collect first: replacing while iterating named_modules would visit the new modules.
    targets = [(name, mod) for name, mod in model.named_modules()
               if name and isinstance(mod, types)]
    for name, mod in targets:
        new = build(mod)
        if new is None:
            continue
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        replaced.append((name, mod))
    return replaced


def restore_modules(model: nn.Module, replaced: Replaced) -> None:
    """Put back the modules that `swap_modules` replaced (in reverse order).

    >>> m = nn.Sequential(nn.ReLU())
    >>> restore_modules(m, swap_modules(m, nn.ReLU, lambda old: nn.GELU())); m[0]
    ReLU()
    """
    for name, mod in reversed(replaced):
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, mod)
