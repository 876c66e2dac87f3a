"""Samplers: ``LengthGroupedSampler`` and ``InternRepoSampler`` (XTuner's arguments) and
mmengine's ``DefaultSampler``.

``LengthGroupedSampler`` shuffles, cuts the order into mega-batches, sorts each mega-batch by
length (longest first) so a batch holds rows of similar length (less padding), and puts the
longest batch first so an out-of-memory shows at step one. Each rank takes every
``world_size``-th index, as ``DefaultSampler`` does.
"""
import math
from typing import Iterator, Optional, Sized

import numpy as np
import torch
from mmengine.dataset import DefaultSampler
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from torch.utils.data import Sampler

from xft.parallel.sequence.groups import get_data_parallel_rank, get_data_parallel_world_size
from xft.utils.errors import ConfigError

# Mega-batches hold at most this many global batches (XTuner's and HF Trainer's default).
MAX_MEGA_BATCH_MULT = 50

__all__ = ['LengthGroupedSampler', 'InternRepoSampler', 'InternlmRepoSampler', 'DefaultSampler',
           'length_grouped_indices']

# InternRepoSampler's seed in XTuner, which InternEVO's data order was aligned with.
INTERN_REPO_SEED = 1024


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


class InternRepoSampler(Sampler):
    """``sampler=dict(type=InternRepoSampler, shuffle=True, seed=1024)`` in XTuner's full
    fine-tuning configs (with ``batch_sampler=dict(type=BatchSampler, drop_last=True, ...)``).

    The order is numpy's ``RandomState(seed + epoch)`` shuffle, as XTuner and InternEVO draw it,
    so a run sees its rows in the order it saw them there. The tail that does not fill every
    data-parallel rank is dropped (no row is repeated), and data-parallel rank ``d`` of ``D``
    takes every ``D``-th index from ``d``: the ranks of a sequence-parallel group draw the same
    rows. XTuner forces the seed to 1024 whatever the config says; here the config's seed is
    used, 1024 when it gives none.
    """

    def __init__(self, dataset: Sized, shuffle: bool = True, seed: Optional[int] = None) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = INTERN_REPO_SEED if seed is None else int(seed)
        self.epoch = 0
        self.rank = get_data_parallel_rank()
        self.world_size = get_data_parallel_world_size()
        self.num_samples = len(dataset) // self.world_size
        self.total_size = self.num_samples * self.world_size
        if self.num_samples == 0:
            raise ConfigError(f'InternRepoSampler: {len(dataset)} rows cannot give each of '
                              f'{self.world_size} data-parallel ranks one row')

    def __iter__(self) -> Iterator[int]:
        indices = np.arange(len(self.dataset))
        if self.shuffle:
            np.random.RandomState(self.seed + self.epoch).shuffle(indices)
        return iter(indices[:self.total_size][self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class InternlmRepoSampler(InternRepoSampler):
    """XTuner's older name for ``InternRepoSampler``."""

    def __init__(self, dataset: Sized, shuffle: bool = True, seed: Optional[int] = None) -> None:
        print_log('InternlmRepoSampler is the older name of InternRepoSampler; it samples the same',
                  logger='current')
        super().__init__(dataset, shuffle=shuffle, seed=seed)
