"""SequenceParallelSampler: every rank of a sequence-parallel group draws the same rows."""
from mmengine.dataset import DefaultSampler

from .groups import get_data_parallel_rank, get_data_parallel_world_size


class SequenceParallelSampler(DefaultSampler):
    """mmengine's ``DefaultSampler`` over data-parallel ranks instead of all ranks.

    One shuffled order (the seed is shared by every rank); data-parallel rank ``d`` of ``D``
    draws its indices ``d, d + D, ...``. The ``sp`` ranks of a sequence-parallel group share
    their data-parallel rank, so they draw the same rows, and each then trains its piece of
    them. At sequence-parallel size 1 this is exactly ``DefaultSampler``.

    ``sampler=dict(type=SequenceParallelSampler, shuffle=True, seed=None, round_up=True)``
    """

    def __init__(self, dataset, shuffle: bool = True, seed=None, round_up: bool = True) -> None:
        super().__init__(dataset, shuffle=shuffle, seed=seed, round_up=round_up)
        self.rank = get_data_parallel_rank()
        self.world_size = get_data_parallel_world_size()
        if self.round_up:
            self.num_samples = -(-len(self.dataset) // self.world_size)
            self.total_size = self.num_samples * self.world_size
        else:
            self.num_samples = -(-(len(self.dataset) - self.rank) // self.world_size)
            self.total_size = len(self.dataset)
