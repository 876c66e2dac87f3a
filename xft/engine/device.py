"""Running one config on GPU or CPU without editing it."""
import os

import torch
import torch.distributed as dist
from mmengine.logging import print_log

# What AmpOptimWrapper takes that OptimWrapper does not.
_AMP_ONLY_KEYS = ('loss_scale', 'dtype', 'use_fsdp')


def adapt_optim_wrapper(cfg) -> None:
    """XTuner configs ask for ``AmpOptimWrapper`` (fp16/bf16 mixed precision on CUDA).

    mmengine's AmpOptimWrapper refuses the CPU, so without CUDA we train with the plain
    ``OptimWrapper`` in the model's own dtype, and say so in the log.
    """
    if torch.cuda.is_available():
        return
    wrapper = cfg.get('optim_wrapper')
    if not wrapper:
        return
    wrapper_type = wrapper.get('type')
    name = wrapper_type if isinstance(wrapper_type, str) else getattr(wrapper_type, '__name__', '')
    if name != 'AmpOptimWrapper':
        return
    # A registry name, not the class: the config is dumped to Python and must stay printable.
    wrapper['type'] = 'OptimWrapper'
    for key in _AMP_ONLY_KEYS:
        wrapper.pop(key, None)
    print_log('No CUDA device: AmpOptimWrapper replaced by OptimWrapper (no mixed precision on CPU)',
              logger='current')


def setup_cpu_distributed(cfg) -> None:
    """``--launcher pytorch`` on a CPU build of torch: mmengine's own setup calls a CUDA
    function, so we start a gloo group ourselves and wrap the model without device ids."""
    if torch.cuda.is_available() or cfg.get('launcher', 'none') == 'none':
        return
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo', init_method='env://')
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                 broadcast_buffers=False,
                                 find_unused_parameters=cfg.get('find_unused_parameters', False))
    print_log(f'gloo process group: rank {dist.get_rank()} of {dist.get_world_size()} '
              f'(local rank {os.environ.get("LOCAL_RANK", "0")})', logger='current')
