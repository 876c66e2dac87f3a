"""What ``xft train`` does with a config's ``sequence_parallel_size`` before building the Runner.

``setup_sequence_parallel(cfg)`` reads the size (a top-level config variable, as XTuner's
configs declare it in PART 1, or ``--cfg-options sequence_parallel_size=N``), checks it
against the launcher and the number of processes, starts torch.distributed if mmengine has
not yet (the groups must exist before the model is built: the model checks its heads and
switches its attention then), creates the groups, and makes sure the training sampler gives
every rank of a group the same rows. ``TrainLoop`` calls ``check_sequence_parallel_size``
to refuse a run whose groups were not set up this way.
"""
import torch.distributed as dist
from mmengine.logging import print_log

from xft.utils.errors import ConfigError

from .groups import get_sequence_parallel_world_size, init_sequence_parallel
from .sampler import SequenceParallelSampler


def sequence_parallel_size_of(cfg) -> int:
    """The config's ``sequence_parallel_size`` (1 when absent), checked to be a positive int."""
    size = cfg.get('sequence_parallel_size', 1)
    if size is None:
        return 1
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f'sequence_parallel_size: expected a positive integer, got {size!r}')
    return size


def check_sequence_parallel_size(size, where='sequence_parallel_size') -> None:
    """Refuse, in one line, a size the process groups of this process do not have."""
    if size in (None, 1) or get_sequence_parallel_world_size() == size:
        return
    raise ConfigError(f'{where}={size}: this process has no sequence-parallel groups of {size} ranks; '
                      f'train with `NPROC_PER_NODE={size} xft train CONFIG` (or a multiple of {size} '
                      f'processes), which sets them up')


def setup_sequence_parallel(cfg) -> int:
    """Prepare the sequence-parallel groups a config asks for; returns the size."""
    size = sequence_parallel_size_of(cfg)
    if size == 1:
        return 1
    if cfg.get('launcher', 'none') == 'none':
        raise ConfigError(f'sequence_parallel_size={size} splits each row over {size} processes; start them '
                          f'with NPROC_PER_NODE={size} xft train CONFIG (or a multiple of {size})')
    _start_process_group(cfg)
    init_sequence_parallel(size)
    _use_sequence_parallel_sampler(cfg, size)
    world = dist.get_world_size()
    _log_once(f'sequence parallel: {world} processes in {world // size} group(s) of {size}; the ranks of a group '
              f'train the same rows, each holding 1/{size} of their tokens')
    return size


def _log_once(message: str) -> None:
    # Before the Runner exists every rank prints for itself: one line from rank 0 is enough.
    if not dist.is_initialized() or dist.get_rank() == 0:
        print_log(message, logger='current')


def _start_process_group(cfg) -> None:
    """torch.distributed as mmengine's Runner would start it (it then leaves it be)."""
    if dist.is_initialized():
        return
    from mmengine.dist import init_dist
    dist_cfg = dict((cfg.get('env_cfg') or {}).get('dist_cfg') or {})
    strategy = cfg.get('strategy') or {}
    strategy_type = strategy.get('type') if isinstance(strategy, dict) else None
    name = strategy_type if isinstance(strategy_type, str) else getattr(strategy_type, '__name__', '')
    if 'DeepSpeed' in name:
        dist_cfg.setdefault('init_backend', 'deepspeed')
    init_dist(cfg.launcher, **dist_cfg)


def _type_name(value) -> str:
    name = value if isinstance(value, str) else getattr(value, '__name__', '')
    return name.split('.')[-1]


def _use_sequence_parallel_sampler(cfg, size: int) -> None:
    """Every rank of a group must draw the same rows: mmengine's DefaultSampler (what a config
    written at size 1 has, or one whose size came from --cfg-options) becomes
    SequenceParallelSampler with the same arguments; any other sampler is refused."""
    loader = cfg.get('train_dataloader') or {}
    sampler = loader.get('sampler')
    if not isinstance(sampler, dict):
        raise ConfigError(f'sequence_parallel_size={size}: train_dataloader.sampler must be '
                          f'dict(type=SequenceParallelSampler, ...), got {sampler!r}')
    name = _type_name(sampler.get('type'))
    if name == 'SequenceParallelSampler':
        return
    if name != 'DefaultSampler':
        raise ConfigError(f'sequence_parallel_size={size}: train_dataloader.sampler {name} gives each rank its '
                          f'own rows; the {size} ranks of a group need the same rows: use SequenceParallelSampler')
    # A dotted name, not the class: mmengine's registry imports it, and the config the Runner
    # dumps into the work dir stays printable Python that re-runs.
    sampler['type'] = f'{SequenceParallelSampler.__module__}.{SequenceParallelSampler.__name__}'
    _log_once(f'sequence_parallel_size={size}: train_dataloader.sampler DefaultSampler -> SequenceParallelSampler '
              '(the same arguments; each group of ranks draws the same rows)')
