"""Running one config on GPU or CPU without editing it."""
import os
import subprocess

import torch
import torch.distributed as dist
from mmengine.logging import print_log

from xft.utils.errors import UserError

# What AmpOptimWrapper takes that OptimWrapper does not.
_AMP_ONLY_KEYS = ('loss_scale', 'dtype', 'use_fsdp')


def adapt_optim_wrapper(cfg) -> None:
    """XTuner configs ask for ``AmpOptimWrapper`` (fp16/bf16 mixed precision on CUDA).

    On CUDA, torch's Adam/AdamW become fused (`use_fused_adam`). mmengine's AmpOptimWrapper
    refuses the CPU, so without CUDA we train with the plain ``OptimWrapper`` in the model's
    own dtype, and say so in the log.
    """
    if torch.cuda.is_available():
        use_fused_adam(cfg)
        amp_dtype_by_name(cfg)
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


def amp_dtype_by_name(cfg) -> None:
    """Spell the optim wrapper's dtype the way ``AmpOptimWrapper`` accepts it.

    It takes ``torch.bfloat16`` or ``'bfloat16'``, but mmengine dumps a dtype object into the
    work dir's config as the string ``'torch.bfloat16'``, which it refuses: without this, a
    dumped config whose PART 1 says ``torch_dtype = torch.bfloat16`` would not re-run on a GPU.

    >>> cfg = {'optim_wrapper': {'type': 'AmpOptimWrapper', 'dtype': 'torch.float16'}}
    >>> amp_dtype_by_name(cfg); cfg['optim_wrapper']['dtype']
    'float16'
    """
    wrapper = cfg.get('optim_wrapper') or {}
    dtype = wrapper.get('dtype')
    if isinstance(dtype, str) and dtype.startswith('torch.'):
        wrapper['dtype'] = dtype[len('torch.'):]


_FUSABLE_OPTIMIZERS = ('Adam', 'AdamW')


def use_fused_adam(cfg) -> None:
    """Ask torch's Adam/AdamW for its fused CUDA kernel unless the config chose an implementation.

    The default (foreach) implementation allocates temporaries the size of all trainable
    weights during the step (about 0.6 GiB for LoRA r=64 on a 7B model, which is where a
    short-row QLoRA step peaks) and launches a kernel per operation; the fused kernel does
    the same arithmetic in one pass. Optimizer state dicts are the same either way.

    >>> cfg = {'optim_wrapper': {'optimizer': {'type': 'AdamW', 'lr': 2e-4}}}
    >>> use_fused_adam(cfg); cfg['optim_wrapper']['optimizer']['fused']
    True
    """
    optimizer = (cfg.get('optim_wrapper') or {}).get('optimizer')
    if not isinstance(optimizer, dict) or 'fused' in optimizer or 'foreach' in optimizer:
        return
    kind = optimizer.get('type')
    if isinstance(kind, str):
        fusable = kind.split('.')[-1] in _FUSABLE_OPTIMIZERS
    else:
        fusable = kind in (torch.optim.Adam, torch.optim.AdamW)
    if fusable:
        optimizer['fused'] = True


def slurm_environment(environ=os.environ, hostnames=None) -> dict:
    """torch.distributed's ``env://`` variables for a process started by ``srun``.

    >>> env = slurm_environment({'SLURM_PROCID': '3', 'SLURM_NTASKS': '4', 'SLURM_LOCALID': '1',
    ...                          'SLURM_NODELIST': 'node[7-8]'}, hostnames=['node7', 'node8'])
    >>> env['RANK'], env['WORLD_SIZE'], env['LOCAL_RANK'], env['MASTER_ADDR'], env['MASTER_PORT']
    ('3', '4', '1', 'node7', '29500')
    """
    if 'SLURM_PROCID' not in environ:
        raise UserError('--launcher slurm: SLURM_PROCID is not set; start the job with srun')
    master = environ.get('MASTER_ADDR')
    if master is None:
        if hostnames is None:
            listing = subprocess.run(['scontrol', 'show', 'hostnames', environ['SLURM_NODELIST']],
                                     capture_output=True, text=True, check=True)
            hostnames = listing.stdout.split()
        master = hostnames[0]
    return {'RANK': environ['SLURM_PROCID'], 'WORLD_SIZE': environ['SLURM_NTASKS'],
            'LOCAL_RANK': environ.get('SLURM_LOCALID', '0'), 'MASTER_ADDR': master,
            'MASTER_PORT': environ.get('MASTER_PORT', '29500')}


def setup_distributed(cfg) -> None:
    """Prepare ``--launcher pytorch|slurm``.

    On CUDA mmengine sets the process group up itself (``--launcher slurm`` gets the
    ``env://`` variables from SLURM's). A CPU build of torch needs more: mmengine's own setup
    calls a CUDA function, so we start a gloo group ourselves (the same code path CI tests
    with two processes). The model wrapper is chosen by :func:`choose_model_wrapper`.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher == 'none':
        return
    if launcher == 'slurm':
        os.environ.update(slurm_environment())
    choose_model_wrapper(cfg)
    if torch.cuda.is_available():
        check_local_gpu(os.environ, torch.cuda.device_count())
        return
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo', init_method='env://')
    print_log(f'gloo process group: rank {dist.get_rank()} of {dist.get_world_size()} '
              f'(local rank {os.environ.get("LOCAL_RANK", "0")})', logger='current')


def check_local_gpu(environ, gpus: int) -> None:
    """Each process of a node trains on the GPU of its local rank: a rank beyond the node's
    GPUs is refused in one line, before CUDA or NCCL fail in theirs.

    >>> check_local_gpu({'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '2'}, gpus=2)
    >>> check_local_gpu({'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '2'}, gpus=1)
    Traceback (most recent call last):
    ...
    xft.utils.errors.UserError: 2 processes per node (NPROC_PER_NODE) but this machine has 1 GPU: start at most 1 (local rank 1 has no GPU)
    """
    local_rank = int(environ.get('LOCAL_RANK', '0'))
    if local_rank >= gpus:
        per_node = environ.get('LOCAL_WORLD_SIZE', str(local_rank + 1))
        raise UserError(f'{per_node} processes per node (NPROC_PER_NODE) but this machine has {gpus} GPU'
                        f'{"s" if gpus != 1 else ""}: start at most {gpus} (local rank {local_rank} has no GPU)')


def trains_adapters(cfg) -> bool:
    """True when the config's model trains LoRA adapters (LoRA or QLoRA), not every weight."""
    model = cfg.get('model') or {}
    return isinstance(model, dict) and (model.get('lora') is not None or model.get('peft_model') is not None)


def choose_model_wrapper(cfg) -> None:
    """The data-parallel wrapper of a Runner run (DeepSpeed's FlexibleRunner has its own).

    A ``model_wrapper_cfg`` the config sets is kept. Otherwise LoRA and QLoRA get
    ``StepDataParallel`` (``xft.engine.data_parallel``: one reduction per optimizer step, CUDA
    graphs stay on) and full fine-tuning mmengine's ``MMDistributedDataParallel`` (torch's
    DDP, whose reducer overlaps the reduction of a model-sized gradient with the backward).
    Without CUDA, torch's DDP gets no device ids.

    >>> from mmengine.config import Config
    >>> cfg = Config(dict(model=dict(lora=dict(r=8))))
    >>> choose_model_wrapper(cfg); cfg.model_wrapper_cfg['type']
    'StepDataParallel'
    """
    if cfg.get('runner_type') == 'FlexibleRunner':
        return
    from xft.engine import data_parallel  # noqa: F401  (registers StepDataParallel)
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        wrapper = (dict(type='StepDataParallel') if trains_adapters(cfg) else
                   dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                        find_unused_parameters=cfg.get('find_unused_parameters', False)))
    wrapper = dict(wrapper)
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    if not torch.cuda.is_available() and _is_torch_ddp(wrapper['type']):
        wrapper.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper


def _is_torch_ddp(wrapper_type) -> bool:
    from mmengine.registry import MODEL_WRAPPERS
    from torch.nn.parallel import DistributedDataParallel
    kind = MODEL_WRAPPERS.get(wrapper_type) if isinstance(wrapper_type, str) else wrapper_type
    return isinstance(kind, type) and issubclass(kind, DistributedDataParallel)


def share_preprocessing(cfg) -> None:
    """Several processes: rank 0 preprocesses the training data into a cache under the work
    dir, the other ranks wait for it and load it (``process_hf_dataset(cache_dir=...)``).
    A cache_dir the config sets itself is kept."""
    if cfg.get('launcher', 'none') == 'none':
        return
    dataset = (cfg.get('train_dataloader') or {}).get('dataset')
    if not isinstance(dataset, dict) or dataset.get('cache_dir') is not None:
        return
    dataset_type = dataset.get('type')
    name = dataset_type if isinstance(dataset_type, str) else getattr(dataset_type, '__name__', '')
    if name.split('.')[-1] != 'process_hf_dataset':
        return
    dataset['cache_dir'] = os.path.join(cfg.work_dir, 'processed_train_dataset')
    print_log(f'train_dataloader.dataset.cache_dir={dataset["cache_dir"]}: rank 0 preprocesses, '
              'the other ranks load its result', logger='current')

