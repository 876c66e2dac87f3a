"""The process groups of sequence parallelism: which ranks share a row, which share data.

With ``W`` processes and sequence-parallel size ``sp`` (``sp`` divides ``W``), ranks
``[i * sp, (i + 1) * sp)`` form sequence-parallel group ``i``: they hold the pieces of the
same rows. Ranks ``{j, j + sp, j + 2 sp, ...}`` form data-parallel group ``j``: they hold
different rows, ``W / sp`` of them per step. This is XTuner 0.1.23's layout (contiguous
sequence-parallel groups, so that on one machine a row's pieces talk over NVLink).

The groups are process-wide, as torch.distributed's default group is: created once per
process by ``init_sequence_parallel`` (every rank must call it, in the same order), read by
the getters below. Before that (or at size 1) the getters describe the plain world: one
sequence-parallel rank, every rank its own data-parallel rank.
"""
import dataclasses
from typing import Optional

import torch.distributed as dist

from xft.utils.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class _Groups:
    size: int                 # sequence-parallel size
    sequence_group: object    # this rank's sequence-parallel group
    data_group: object        # this rank's data-parallel group


_GROUPS: Optional[_Groups] = None


def init_sequence_parallel(sequence_parallel_size: int = 1) -> None:
    """Split the world into sequence-parallel groups of ``sequence_parallel_size`` ranks.

    Needs torch.distributed initialized (at size 1 it need not be, and nothing is created).
    """
    global _GROUPS
    size = int(sequence_parallel_size)
    if size < 1:
        raise ConfigError(f'sequence_parallel_size={sequence_parallel_size}: expected a positive integer')
    if size == 1:
        return
    if _GROUPS is not None:
        if _GROUPS.size == size:
            return
        raise RuntimeError(f'init_sequence_parallel({size}): groups of size {_GROUPS.size} exist already')
    if not dist.is_initialized():
        raise ConfigError(f'sequence_parallel_size={size} needs several processes; start them with '
                          f'NPROC_PER_NODE={size} xft train CONFIG')
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % size:
        raise ConfigError(f'sequence_parallel_size={size} must divide the number of processes ({world}); '
                          f'start a multiple of {size} of them')
    sequence_group = data_group = None
    # Every rank creates every group, in one order (new_group is collective).
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            sequence_group = group
    for offset in range(size):
        group = dist.new_group(list(range(offset, world, size)))
        if rank % size == offset:
            data_group = group
    _GROUPS = _Groups(size, sequence_group, data_group)


def destroy_sequence_parallel() -> None:
    """Forget the groups (tests; a process that trains twice with other sizes)."""
    global _GROUPS
    _GROUPS = None


def is_sequence_parallel_initialized() -> bool:
    return _GROUPS is not None


def get_sequence_parallel_group():
    """This rank's sequence-parallel group; None at size 1 (there is nobody to talk to)."""
    return None if _GROUPS is None else _GROUPS.sequence_group


def get_sequence_parallel_world_size() -> int:
    return 1 if _GROUPS is None else _GROUPS.size


def get_sequence_parallel_rank() -> int:
    """Which piece of each row this rank holds (0 at size 1)."""
    return 0 if _GROUPS is None else dist.get_rank(_GROUPS.sequence_group)


def get_data_parallel_group():
    """This rank's data-parallel group; None (torch.distributed's default group: every rank)
    at size 1."""
    return None if _GROUPS is None else _GROUPS.data_group


def get_data_parallel_world_size() -> int:
    """How many different rows are trained at once: world size / sequence-parallel size."""
    if not dist.is_initialized():
        return 1
    return dist.get_world_size() // get_sequence_parallel_world_size()


def get_data_parallel_rank() -> int:
    if not dist.is_initialized():
        return 0
    return dist.get_rank() // get_sequence_parallel_world_size()
