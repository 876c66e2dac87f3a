"""Learning-rate schedule fixes that depend on the dataset size, applied before mmengine builds them."""
from mmengine.logging import print_log

# A scheduler over fewer iterations never reaches its end value (see drop_empty_schedulers).
MIN_ITERATIONS = 2


def drop_empty_schedulers(schedulers, iters_per_epoch: int) -> list:
    """Drop by-epoch schedulers that span fewer than two iterations once converted to iterations.

    XTuner configs warm up for ``warmup_ratio * max_epochs`` epochs. On a small dataset that
    rounds to 0 iterations (an epoch under ~12 iterations at 3% of 3 epochs), and mmengine
    refuses the scheduler (``end == begin``) with a traceback; or to exactly 1 iteration,
    and then the learning rate silently stays at ``start_factor * lr`` for the whole run:
    LinearLR reaches the full rate one step after its last iteration, and the cosine decay
    that follows scales whatever rate it is handed (measured with mmengine 0.10.7: a 1e-5
    start factor gives lr 1e-5 x lr at every iteration; 2 iterations of warm-up work). So such
    a scheduler is dropped and the next one starts where it began. ``schedulers`` is the
    config's list of dicts, changed in place. Returns the names dropped.
    """
    if not isinstance(schedulers, list):
        return []
    dropped = []
    for scheduler in list(schedulers):
        if not (isinstance(scheduler, dict) and scheduler.get('by_epoch', True)
                and scheduler.get('convert_to_iter_based')):
            continue
        begin, end = scheduler.get('begin', 0), scheduler.get('end')
        if end is None or int(end * iters_per_epoch) - int(begin * iters_per_epoch) >= MIN_ITERATIONS:
            continue
        for later in schedulers:
            if isinstance(later, dict) and later is not scheduler and later.get('begin', 0) == end:
                later['begin'] = begin
        schedulers.remove(scheduler)
        kind = scheduler.get('type')
        dropped.append(getattr(kind, '__name__', str(kind)))
    if dropped:
        print_log(f'param_scheduler: {", ".join(dropped)} spans fewer than {MIN_ITERATIONS} of '
                  f'{iters_per_epoch} iterations per epoch on this dataset and was dropped', logger='current')
    return dropped
