"""Samplers: ``LengthGroupedSampler`` (XTuner's arguments) and mmengine's ``DefaultSampler``.

``LengthGroupedSampler`` shuffles, cuts the order into mega-batches, sorts each mega-batch by
length (longest first) so a batch holds rows of similar length (less padding), and puts the
longest batch first so an out-of-memory shows at step one. Each rank takes every
``world_size``-th index, as ``DefaultSampler`` does.
"""
import math
from typing import Iterator, Optional, Sized

import torch
from mmengine.dataset import DefaultSampler
from mmengine.dist import get_dist_info, sync_random_seed
from torch.utils.data import Sampler

from xft.utils.errors import ConfigError

# Mega-batches hold at most this many global batches (XTuner's and HF Trainer's default).
MAX_MEGA_BATCH_MULT = 50

__all__ = ['LengthGroupedSampler', 'DefaultSampler', 'length_grouped_indices']


def length_grouped_indices(lengths, group_batch_size, generator=None):
    """A permutation of ``range(len(lengths))`` grouped into length-sorted mega-batches."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    groups = [sorted(order[i:i + group_batch_size], key=lambda k: lengths[k], reverse=True)
              for i in range(0, len(order), group_batch_size)]
    if groups:
        longest = max(range(len(groups)), key=lambda g: lengths[groups[g][0]])
        groups[0][0], groups[longest][0] = groups[longest][0], groups[0][0]
    return [index for group in groups for index in group]


class LengthGroupedSampler(Sampler):
    """``sampler=dict(type=LengthGroupedSampler, length_property='length',
    per_device_batch_size=batch_size * accumulative_counts)`` in an XTuner config."""

    def __init__(self, dataset: Sized, per_device_batch_size: int, length_property='length',
                 mega_batch_mult: Optional[int] = None, seed: Optional[int] = None,
                 round_up: bool = True) -> None:
        self.rank, self.world_size = get_dist_info()
        self.dataset = dataset
        self.seed = sync_random_seed() if seed is None else seed
        self.epoch = 0
        self.round_up = round_up
        if round_up:
            steps = math.ceil(len(dataset) / self.world_size / per_device_batch_size)
            self.num_samples = steps * per_device_batch_size
            self.total_size = self.num_samples * self.world_size
        else:
            self.num_samples = math.ceil((len(dataset) - self.rank) / self.world_size)
            self.total_size = len(dataset)
        total_batch_size = per_device_batch_size * self.world_size
        if mega_batch_mult is None:
            # About four mega-batches on small sets, never more than 50 batches in one.
            mega_batch_mult = max(1, min(len(dataset) // (total_batch_size * 4),
                                         MAX_MEGA_BATCH_MULT))
        self.group_batch_size = mega_batch_mult * total_batch_size
        self.length = _lengths(dataset, length_property)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        indices = length_grouped_indices(self.length, self.group_batch_size, generator)
        if self.round_up:
            repeats = self.total_size // len(indices) + 1
            indices = (indices * repeats)[:self.total_size]
        return iter(indices[self.rank:self.total_size:self.world_size])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def _lengths(dataset, length_property):
    lengths = getattr(dataset, length_property, None)
    if lengths is None and hasattr(dataset, 'column_names') and \
            length_property in dataset.column_names:
        lengths = dataset[length_property]
    if lengths is None:
        raise ConfigError(f'LengthGroupedSampler: the dataset has no {length_property!r} '
                          '(process_hf_dataset sets dataset.length)')
    lengths = list(lengths)
    if len(lengths) != len(dataset):
        raise ConfigError(f'LengthGroupedSampler: {length_property!r} has {len(lengths)} '
                          f'entries for {len(dataset)} rows')
    return lengths
