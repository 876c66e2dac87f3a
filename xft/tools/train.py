"""``python tools/train.py CONFIG``: build a config with mmengine's Runner and train it.

One process: ``xft train CONFIG``. A trial run: ``xft train CONFIG --max-iters 3``. Several
processes: ``NPROC_PER_NODE=2 xft train CONFIG`` (torchrun, ``--launcher pytorch``) or
``srun ... xft train CONFIG --launcher slurm``; DeepSpeed ZeRO through mmengine's FlexibleRunner
with ``--deepspeed deepspeed_zero2`` (or a JSON file).

Before the model loads, the config and its ``--cfg-options`` are checked, the models it names
are found (or the command ends in one line saying how to point it at a local folder), and the
training data is processed (``xft.tools.train_preflight``), so a mistake costs seconds.
Every run saves checkpoints atomically, saves and stops on SIGTERM/SIGINT within seconds,
resumes exactly (``--resume auto``) and stops on a NaN loss: see docs/distributed_and_faults.md.
The console shows progress and results; the environment, the whole config and the hook table go
to the run's log file (``--verbose`` shows them too).
"""
import argparse
import os
import sys
from pathlib import Path

from xft.tools.command import EXIT_OK, exit_code_for_signal, run_command
from xft.tools.notices import quiet_library_notices, quiet_console
from xft.utils.errors import UserError

DESCRIPTION = ('Train a model from an xft config. The models and the data are checked before '
               'the model loads; SIGTERM/SIGINT save a checkpoint and stop.')


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(prog='xft train', description=DESCRIPTION)
    parser.add_argument('config', help='config file path, or the bare name of a config in configs/')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. pretrained_model_name_or_path=DIR '
                             '(a PART 1 variable reaches every entry built from it) '
                             'model.lora.r=8 train_dataloader.batch_size=2')
    parser.add_argument('--max-iters', type=int, metavar='N',
                        help='a trial run: the first N iterations of the config\'s schedule, each '
                             'logged, then the loss curve; EvaluateChatHook and the validation loop are skipped')
    parser.add_argument('--resume', nargs='?', const='auto', default=None, metavar='auto|PATH',
                        help='resume from the newest checkpoint in the work dir (auto) or from PATH')
    parser.add_argument('--seed', type=int, help='random seed (default: the config\'s randomness.seed)')
    parser.add_argument('--deterministic', action='store_true', help='ask torch for deterministic kernels')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher for distributed training')
    parser.add_argument('--deepspeed', metavar='NAME|JSON',
                        help='train with DeepSpeed through mmengine\'s FlexibleRunner: a shipped config '
                             '(deepspeed_zero1, deepspeed_zero2, deepspeed_zero2_offload, deepspeed_zero3, '
                             'deepspeed_zero3_offload) or a JSON file; "auto" fields are filled from the config')
    parser.add_argument('--verbose', action='store_true',
                        help='also show on the console what goes to the log file only: the environment, '
                             'the whole config, the hook table, and library notices')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_train_config(args):
    """The config as the Runner will see it: loaded, overridden, adapted to this machine."""
    from xft.engine.config import load_config, resolve_config
    from xft.engine.device import adapt_optim_wrapper, share_preprocessing
    from xft.engine.model_sources import check_model_sources

    cfg = load_config(args.config, args.cfg_options)
    # Imported once the config is known to load: the hooks package imports the model stack.
    from xft.engine.hooks.checkpoint_hook import use_safe_checkpoint_hook
    from xft.engine.hooks.plot_hook import check_visualizer
    check_visualizer(cfg)
    check_model_sources(cfg, resolve_config(args.config))  # before anything waits on a model
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or str(Path('work_dirs') / resolve_config(args.config).stem)
    if getattr(args, 'max_iters', None) is not None:
        from xft.tools.trial_run import make_trial_run
        make_trial_run(cfg, args.max_iters)
    if args.seed is not None or args.deterministic:
        randomness = dict(cfg.get('randomness') or {})
        if args.seed is not None:
            randomness['seed'] = args.seed
        randomness['deterministic'] = args.deterministic
        cfg.randomness = randomness
    if args.resume == 'auto':
        require_checkpoint_to_resume(cfg.work_dir)
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


def require_checkpoint_to_resume(work_dir) -> None:
    """``--resume auto`` continues a run; with no checkpoint to continue from, it must not
    silently train from scratch (mmengine logs "resumed from None" and does)."""
    from mmengine.runner import find_latest_checkpoint
    latest = find_latest_checkpoint(str(work_dir)) if Path(work_dir).is_dir() else None
    if latest is None or not Path(latest).exists():
        raise UserError(f'{work_dir}: no checkpoint to resume from (--resume looks for the newest '
                        'iter_N.pth named by last_checkpoint there); train without --resume to start '
                        'from scratch, or give --resume PATH')


def check_before_launch(argv) -> None:
    """What ``NPROC_PER_NODE=N xft train`` checks once before starting N processes that would
    each fail: the config and its options, the models, a checkpoint for --resume."""
    from xft.engine.config import load_config, resolve_config
    from xft.engine.model_sources import check_model_sources
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    check_model_sources(cfg, resolve_config(args.config))
    if args.resume == 'auto':
        require_checkpoint_to_resume(args.work_dir or cfg.get('work_dir') or
                                     Path('work_dirs') / resolve_config(args.config).stem)


def train(cfg, verbose=False):
    from xft.engine.checkpoint import register_checkpoint_loader
    from xft.engine.device import setup_distributed
    from xft.engine.hooks.exact_resume_hook import ExactResumeHook
    from xft.engine.hooks.preemption_hook import PreemptionHook
    from xft.engine.hooks.throughput_hook import add_throughput_hook_if_missing
    from xft.parallel.sequence import setup_sequence_parallel

    register_checkpoint_loader()
    setup_distributed(cfg)
    setup_sequence_parallel(cfg)  # before the Runner builds the model and the sampler
    runner = runner_class(cfg, verbose).from_cfg(cfg)
    runner.register_hook(ExactResumeHook())
    runner.register_hook(PreemptionHook())
    add_throughput_hook_if_missing(runner)  # tokens/s and MFU in every log line
    runner.train()
    return runner


class _QuietConsole:
    """A Runner whose console leaves out what only its log file needs (``notices.quiet_console``).

    mmengine logs the environment and the whole config right after building its logger, in
    ``_log_env``, in Runner and FlexibleRunner alike: the first moment the logger exists.
    """

    def _log_env(self, *args, **kwargs):
        quiet_console(self.logger)
        return super()._log_env(*args, **kwargs)


def runner_class(cfg, verbose=False):
    """The Runner class the config asks for (``runner_type``), quiet on the console unless verbose."""
    from mmengine.registry import RUNNERS
    kind = cfg.get('runner_type', 'Runner')
    base = RUNNERS.get(kind) if isinstance(kind, str) else kind
    if base is None:
        raise UserError(f'runner_type={kind!r}: no such Runner (mmengine has Runner and FlexibleRunner)')
    return base if verbose else type(f'Quiet{base.__name__}', (_QuietConsole, base), {})


def preempted(runner):
    """(signal name, iteration, checkpoint or None) when a signal stopped the run, else None."""
    return next((hook.stopped_by for hook in runner.hooks if getattr(hook, 'stopped_by', None)), None)


def _is_rank_zero() -> bool:
    return os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0')) == '0'


def run(args) -> int:
    from xft.tools.train_preflight import prepare_train_data

    cfg = build_train_config(args)
    prepare_train_data(cfg)
    runner = train(cfg, verbose=args.verbose)
    stop = preempted(runner)
    if stop is None:
        return EXIT_OK
    name, step, path = stop
    if _is_rank_zero():
        if path:
            where = f'after iteration {step}; checkpoint {path}; continue with --resume auto'
        elif step:
            where = f'before iteration {step + 1}; nothing new to save; continue with --resume auto'
        else:
            where = 'before iteration 1; nothing trained'
        print(f'xft train: stopped by {name} {where}', file=sys.stderr, flush=True)
    return exit_code_for_signal(name)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_library_notices(verbose='--verbose' in argv)  # before the libraries are imported
    args = parse_args(argv)
    return run_command('train', run, args, quiet=not _is_rank_zero())


if __name__ == '__main__':
    raise SystemExit(main())
