"""LengthGroupedSampler: a permutation, batches of similar length, longest first, seeded.
InternRepoSampler: XTuner's numpy order, split over data-parallel ranks, the tail dropped."""
import pytest

import numpy as np

from xft.dataset import samplers
from xft.dataset.samplers import DefaultSampler, InternRepoSampler, LengthGroupedSampler
from xft.utils.errors import ConfigError


class Rows:
    def __init__(self, lengths):
        self.length = lengths

    def __len__(self):
        return len(self.length)


def test_every_index_once_and_batches_grouped_by_length():
    lengths = [(i * 37) % 101 + 1 for i in range(64)]
    sampler = LengthGroupedSampler(Rows(lengths), per_device_batch_size=4, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(64)) and len(sampler) == 64
    assert lengths[order[0]] == max(lengths)
    # Within a mega-batch (64 // (4 * 4) = 4 batches -> 16 rows) lengths descend.
    second_group = [lengths[i] for i in order[16:32]]
    assert second_group == sorted(second_group, reverse=True)
    assert list(LengthGroupedSampler(Rows(lengths), 4, seed=3)) == order


def test_epochs_reshuffle():
    sampler = LengthGroupedSampler(Rows(list(range(1, 41))), 2, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_round_up_repeats_to_fill_the_last_batch():
    sampler = LengthGroupedSampler(Rows([3, 1, 2, 5, 4]), per_device_batch_size=4, seed=0)
    order = list(sampler)
    assert len(order) == 8 and set(order) == set(range(5))


def test_reads_the_length_column_of_a_processed_dataset(tiny_tokenizer, tmp_path):
    import json
    from xft.dataset import process_hf_dataset
    path = tmp_path / 'd.json'
    path.write_text(json.dumps([{'conversation': [{'input': 'q' * i, 'output': 'a'}]}
                                for i in range(1, 9)]))
    data = process_hf_dataset(path, tiny_tokenizer, 64, pack_to_max_length=False)
    sampler = LengthGroupedSampler(data, per_device_batch_size=2, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(8))
    # The lengths it grouped by are the dataset's own: the longest row comes first.
    assert data['length'][order[0]] == max(data['length']) > min(data['length'])


def test_missing_length_is_a_config_error():
    with pytest.raises(ConfigError, match="no 'length'"):
        LengthGroupedSampler([1, 2, 3], per_device_batch_size=1, seed=0)


def test_default_sampler_is_mmengines():
    from mmengine.dataset import DefaultSampler as MMEngineDefaultSampler
    assert DefaultSampler is MMEngineDefaultSampler
    assert sorted(DefaultSampler(list(range(5)), shuffle=True, seed=0)) == list(range(5))


def _data_parallel(monkeypatch, rank, world_size):
    monkeypatch.setattr(samplers, 'get_data_parallel_rank', lambda: rank)
    monkeypatch.setattr(samplers, 'get_data_parallel_world_size', lambda: world_size)


def test_intern_repo_sampler_draws_xtuners_order_split_over_data_parallel_ranks(monkeypatch):
    # XTuner's order for 11 rows, seed 1024, epoch 0: numpy's RandomState(1024) shuffle.
    expected = np.arange(11)
    np.random.RandomState(1024).shuffle(expected)
    expected = expected.tolist()
    assert list(InternRepoSampler(list(range(11)))) == expected
    parts = []
    for rank in range(3):
        _data_parallel(monkeypatch, rank, 3)
        sampler = InternRepoSampler(list(range(11)), seed=1024)
        parts.append(list(sampler))
        assert len(sampler) == 3
    # Rank d takes every third index of the order from d; the two rows past 9 are dropped.
    assert parts == [expected[0:9:3], expected[1:9:3], expected[2:9:3]]
    assert not set(parts[0]) & set(parts[1]) and len(set(sum(parts, []))) == 9


def test_intern_repo_sampler_honours_the_seed_and_the_epoch_and_shuffle_false(monkeypatch):
    rows = list(range(50))
    first = list(InternRepoSampler(rows, seed=1))
    assert first != list(InternRepoSampler(rows)) and first == list(InternRepoSampler(rows, seed=1))
    sampler = InternRepoSampler(rows, seed=1)
    sampler.set_epoch(1)
    assert list(sampler) == list(InternRepoSampler(rows, seed=2))
    assert list(InternRepoSampler(rows, shuffle=False)) == rows
    _data_parallel(monkeypatch, 0, 4)
    with pytest.raises(ConfigError, match='^InternRepoSampler: 3 rows cannot give each of 4 data-parallel'):
        InternRepoSampler([0, 1, 2])
