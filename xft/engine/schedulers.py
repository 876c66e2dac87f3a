"""Learning-rate schedule fixes that depend on the dataset size, applied before mmengine builds them."""
from mmengine.logging import print_log


def drop_empty_schedulers(schedulers, iters_per_epoch: int) -> list:
    """Drop by-epoch schedulers that span zero iterations once converted to iterations.

    XTuner configs warm up for ``warmup_ratio * max_epochs`` epochs; on a small dataset
    (an epoch under ~34 iterations at a 3% ratio) that rounds to 0 iterations and mmengine
    refuses the scheduler (``end == begin``) with a traceback. Stretching the warm-up to
    one iteration would keep the learning rate near ``start_factor * lr`` for the whole
    run, so the empty scheduler is dropped and the next one starts where it began.
    ``schedulers`` is the config's list of dicts, changed in place. Returns the names dropped.
    """
    if not isinstance(schedulers, list):
        return []
    dropped = []
    for scheduler in list(schedulers):
        if not (isinstance(scheduler, dict) and scheduler.get('by_epoch', True)
                and scheduler.get('convert_to_iter_based')):
            continue
        begin, end = scheduler.get('begin', 0), scheduler.get('end')
        if end is None or int(end * iters_per_epoch) > int(begin * iters_per_epoch):
            continue
        for later in schedulers:
            if isinstance(later, dict) and later is not scheduler and later.get('begin', 0) == end:
                later['begin'] = begin
        schedulers.remove(scheduler)
        kind = scheduler.get('type')
        dropped.append(getattr(kind, '__name__', str(kind)))
    if dropped:
        print_log(f'param_scheduler: {", ".join(dropped)} spans 0 of {iters_per_epoch} iterations per epoch '
                  'on this dataset and was dropped', logger='current')
    return dropped
