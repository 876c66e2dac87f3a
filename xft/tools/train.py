"""``python tools/train.py CONFIG``: build a config with mmengine's Runner and train it.

One process: ``xft train CONFIG``. Several: ``NPROC_PER_NODE=2 xft train CONFIG`` (torchrun,
``--launcher pytorch``) or ``srun ... xft train CONFIG --launcher slurm``; DeepSpeed ZeRO through
mmengine's FlexibleRunner with ``--deepspeed deepspeed_zero2`` (or a JSON file).
Every run saves checkpoints atomically, saves and stops on SIGTERM/SIGINT, resumes exactly
(``--resume auto``) and stops on a NaN loss: see docs/distributed_and_faults.md.
"""
import argparse
import os
import signal
import sys
from pathlib import Path

from xft.utils.errors import UserError


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(prog='xft train', description='Train a model from an xft config.')
    parser.add_argument('config', help='config file path, or the bare name of a config in configs/')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. model.lora.r=8 train_dataloader.batch_size=2')
    parser.add_argument('--seed', type=int, help='random seed (default: the config\'s randomness.seed)')
    parser.add_argument('--deterministic', action='store_true', help='ask torch for deterministic kernels')
    parser.add_argument('--resume', nargs='?', const='auto', default=None, metavar='auto|PATH',
                        help='resume from the newest checkpoint in the work dir (auto) or from PATH')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher for distributed training')
    parser.add_argument('--deepspeed', metavar='NAME|JSON',
                        help='train with DeepSpeed through mmengine\'s FlexibleRunner: a shipped config '
                             '(deepspeed_zero1, deepspeed_zero2, deepspeed_zero2_offload, deepspeed_zero3, '
                             'deepspeed_zero3_offload) or a JSON file; "auto" fields are filled from the config')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_train_config(args):
    """The config as the Runner will see it: loaded, overridden, adapted to this machine."""
    from xft.engine.config import load_config, resolve_config
    from xft.engine.device import adapt_optim_wrapper, share_preprocessing

    cfg = load_config(args.config, args.cfg_options)
    # Imported once the config is known to load: the hooks package imports the model stack.
    from xft.engine.hooks.checkpoint_hook import use_safe_checkpoint_hook
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or str(Path('work_dirs') / resolve_config(args.config).stem)
    if args.seed is not None or args.deterministic:
        randomness = dict(cfg.get('randomness') or {})
        if args.seed is not None:
            randomness['seed'] = args.seed
        randomness['deterministic'] = args.deterministic
        cfg.randomness = randomness
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not Path(args.resume).exists():
            raise UserError(f'{args.resume}: checkpoint to resume from not found')
        cfg.resume, cfg.load_from = True, args.resume
    if getattr(args, 'deepspeed', None):
        from xft.engine.deepspeed import use_deepspeed
        use_deepspeed(cfg, args.deepspeed)
    else:
        adapt_optim_wrapper(cfg)
    use_safe_checkpoint_hook(cfg)
    share_preprocessing(cfg)
    return cfg


def train(cfg):
    from mmengine.runner import Runner

    from xft.engine.checkpoint import register_checkpoint_loader
    from xft.engine.device import setup_distributed
    from xft.engine.hooks.exact_resume_hook import ExactResumeHook
    from xft.engine.hooks.preemption_hook import PreemptionHook
    from xft.engine.hooks.throughput_hook import add_throughput_hook_if_missing
    from xft.parallel.sequence import setup_sequence_parallel

    register_checkpoint_loader()
    setup_distributed(cfg)
    setup_sequence_parallel(cfg)  # before the Runner builds the model and the sampler
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else _build_custom_runner(cfg)
    runner.register_hook(ExactResumeHook())
    runner.register_hook(PreemptionHook())
    add_throughput_hook_if_missing(runner)  # tokens/s and MFU in every log line
    runner.train()
    return runner


def _build_custom_runner(cfg):
    from mmengine.registry import RUNNERS
    return RUNNERS.build(cfg)


def preempted(runner):
    """(signal name, iteration, checkpoint) when a signal stopped the run, else None."""
    return next((hook.stopped_by for hook in runner.hooks if getattr(hook, 'stopped_by', None)), None)


def _is_rank_zero() -> bool:
    return os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0')) == '0'


def main(argv=None) -> int:
    from xft.engine.config import user_message
    args = parse_args(argv)
    try:
        runner = train(build_train_config(args))
    except UserError as error:
        if _is_rank_zero():
            print(f'xft train: {user_message(error)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('xft train: interrupted', file=sys.stderr)
        return 128 + signal.SIGINT
    stop = preempted(runner)
    if stop is not None:
        name, step, path = stop
        if _is_rank_zero():
            print(f'xft train: stopped by {name} after iteration {step}; checkpoint {path}; '
                  'continue with --resume auto', file=sys.stderr)
        return 128 + signal.Signals[name].value
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
