"""mmengine's DeepSpeedStrategy, refusing a resume with another number of processes.

A ZeRO checkpoint holds one optimizer partition per data-parallel rank
(``[bf16_]zero_pp_rank_<r>_mp_rank_<m>_optim_states.pt``); loaded by another count, DeepSpeed
0.18 fails deep inside its loader or, with fewer ranks, loads some partitions only. As under
DDP (``xft.engine.data_parallel.refuse_other_world_size``), the resume is refused first, in
one line.
"""
import re
from pathlib import Path

from mmengine.dist import get_world_size
from mmengine.registry import STRATEGIES

from xft.engine.data_parallel import refuse_other_world_size

_PARTITION = re.compile(r'^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$')


def saved_world_size(folder) -> int:
    """The data-parallel ranks that wrote the ZeRO checkpoint ``folder`` (0 when it holds no
    optimizer partitions).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     for rank in (0, 1):
    ...         _ = Path(folder, f'bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt').write_bytes(b'')
    ...     saved_world_size(folder)
    2
    """
    path = Path(folder)
    if not path.is_dir():
        return 0
    return len({match.group(1) for match in map(_PARTITION.match, (p.name for p in path.iterdir())) if match})


def _deepspeed_strategy():
    from mmengine._strategy.deepspeed import DeepSpeedStrategy
    return DeepSpeedStrategy


@STRATEGIES.register_module()
class WorldSizeCheckedDeepSpeedStrategy(_deepspeed_strategy()):
    """``strategy = dict(type='WorldSizeCheckedDeepSpeedStrategy', config=...)``: DeepSpeed as
    mmengine runs it, with a resume by another process count refused (see the module doc)."""

    def resume(self, filename: str, **kwargs) -> dict:
        refuse_other_world_size(saved_world_size(filename), get_world_size(), filename)
        return super().resume(filename, **kwargs)
