"""A warm-up that rounds to zero iterations on a small dataset is dropped, not a crash."""
from mmengine.optim import CosineAnnealingLR, LinearLR

from xft.engine.schedulers import drop_empty_schedulers


def xtuner_schedule(warmup_ratio=0.03, max_epochs=3):
    return [
        dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
             convert_to_iter_based=True),
        dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs,
             end=max_epochs, convert_to_iter_based=True),
    ]


def test_warmup_of_zero_iterations_is_dropped_and_the_decay_starts_at_zero():
    schedule = xtuner_schedule()
    # 0.09 epochs of 6 iterations is 0 iterations of warm-up.
    assert drop_empty_schedulers(schedule, iters_per_epoch=6) == ['LinearLR']
    assert len(schedule) == 1
    assert schedule[0]['type'] is CosineAnnealingLR and schedule[0]['begin'] == 0


def test_a_warmup_of_at_least_one_iteration_is_kept():
    schedule = xtuner_schedule()
    assert drop_empty_schedulers(schedule, iters_per_epoch=100) == []
    assert [s['type'] for s in schedule] == [LinearLR, CosineAnnealingLR]
