"""The names XTuner 0.1.23 configs import from ``xtuner.parallel.sequence``, at size 1.

XTuner's configs pick their sampler with
``SequenceParallelSampler if sequence_parallel_size > 1 else DefaultSampler``, so every config
imports this module even when it does not split sequences. At sequence-parallel size 1 each
rank is its own data-parallel rank: ``SequenceParallelSampler`` is mmengine's
``DefaultSampler`` (same arguments) and the group helpers describe the plain world.

Sequence parallelism itself (a row split across ranks, with all-to-all attention) is not
implemented: ``init_sequence_parallel`` refuses a size above 1, and so does ``TrainLoop`` for a
config whose ``sequence_parallel_size`` is above 1 (``check_sequence_parallel_size``).
"""
from mmengine.dataset import DefaultSampler
from mmengine.dist import get_rank, get_world_size

from xft.utils.errors import ConfigError

__all__ = ['SequenceParallelSampler', 'check_sequence_parallel_size', 'init_sequence_parallel',
           'get_sequence_parallel_group', 'get_sequence_parallel_world_size', 'get_sequence_parallel_rank',
           'get_data_parallel_group', 'get_data_parallel_world_size', 'get_data_parallel_rank']


def check_sequence_parallel_size(size, where='sequence_parallel_size') -> None:
    """Refuse a sequence-parallel size other than 1 in one line."""
    if size in (None, 1):
        return
    raise ConfigError(f'{where}={size}: sequence parallelism is not implemented in xft yet; set '
                      f'sequence_parallel_size = 1 (each rank then trains whole rows; divide '
                      f'accumulative_counts by {size} if the config multiplied it)')


class SequenceParallelSampler(DefaultSampler):
    """XTuner's sampler, at sequence-parallel size 1: mmengine's ``DefaultSampler`` (each rank
    draws every ``world_size``-th index of one shuffled order).

    ``sampler=dict(type=SequenceParallelSampler, shuffle=True, seed=None, round_up=True)``
    """


def init_sequence_parallel(sequence_parallel_size: int = 1) -> None:
    check_sequence_parallel_size(sequence_parallel_size)


def get_sequence_parallel_group():
    """None: at size 1 there is no sequence-parallel group to talk to."""
    return None


def get_sequence_parallel_world_size() -> int:
    return 1


def get_sequence_parallel_rank() -> int:
    return 0


def get_data_parallel_group():
    """None: torch.distributed's default group (every rank) is the data-parallel group."""
    return None


def get_data_parallel_world_size() -> int:
    return get_world_size()


def get_data_parallel_rank() -> int:
    return get_rank()
