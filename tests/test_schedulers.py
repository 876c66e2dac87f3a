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


def learning_rates(schedule, iters_per_epoch, max_epochs=3, lr=1.0):
    """The learning rate of every iteration, as mmengine's schedulers give it."""
    import torch
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    built = []
    for entry in schedule:
        entry = dict(entry)
        kind = entry.pop('type')
        entry.pop('convert_to_iter_based')
        entry.update(by_epoch=False, begin=int(entry['begin'] * iters_per_epoch),
                     end=int(entry['end'] * iters_per_epoch))
        built.append(kind(optimizer, **entry))
    rates = []
    for _ in range(iters_per_epoch * max_epochs):
        rates.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        for scheduler in built:
            scheduler.step()
    return rates


def test_a_one_iteration_warmup_is_dropped_because_it_would_freeze_the_learning_rate():
    # 0.09 epochs of 12 iterations is 1 iteration of warm-up. Kept, mmengine leaves the rate
    # at start_factor * lr for the whole run (the control below); dropped, the run decays from lr.
    assert max(learning_rates(xtuner_schedule(), iters_per_epoch=12)) < 1e-4
    schedule = xtuner_schedule()
    assert drop_empty_schedulers(schedule, iters_per_epoch=12) == ['LinearLR']
    rates = learning_rates(schedule, iters_per_epoch=12)
    assert rates[0] == 1.0 and rates[-1] < 0.01


def test_a_two_iteration_warmup_is_kept_and_reaches_the_full_rate():
    schedule = xtuner_schedule()
    assert drop_empty_schedulers(schedule, iters_per_epoch=23) == []  # int(0.09 * 23) == 2
    rates = learning_rates(schedule, iters_per_epoch=23)
    assert rates[0] < 1e-4 and max(rates) == 1.0
