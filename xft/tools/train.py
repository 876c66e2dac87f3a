"""``python tools/train.py CONFIG``: build a config with mmengine's Runner and train it."""
import argparse
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
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_train_config(args):
    """The config as the Runner will see it: loaded, overridden, adapted to this machine."""
    from xft.engine.config import load_config, resolve_config
    from xft.engine.device import adapt_optim_wrapper

    cfg = load_config(args.config, args.cfg_options)
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
        if not Path(args.resume).is_file():
            raise UserError(f'{args.resume}: checkpoint to resume from not found')
        cfg.resume, cfg.load_from = True, args.resume
    adapt_optim_wrapper(cfg)
    return cfg


def train(cfg):
    from mmengine.runner import Runner

    from xft.engine.checkpoint import register_checkpoint_loader
    from xft.engine.device import setup_cpu_distributed

    register_checkpoint_loader()
    setup_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else _build_custom_runner(cfg)
    runner.train()
    return runner


def _build_custom_runner(cfg):
    from mmengine.registry import RUNNERS
    return RUNNERS.build(cfg)


def main(argv=None) -> int:
    from xft.engine.config import user_message
    args = parse_args(argv)
    try:
        train(build_train_config(args))
    except UserError as error:
        print(f'xft train: {user_message(error)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('xft train: interrupted', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
