"""``xft plot-log WORK_DIR``: draw the loss and learning-rate curves of a run as a PNG.

The reading and drawing live in ``xft.engine.loss_curve`` (the ``LossCurveHook`` draws the
same picture when training ends); this is the command around them.
"""
import argparse

from xft.engine.loss_curve import DEFAULT_KEYS, DEFAULT_PNG, plot_work_dir
from xft.tools.command import run_command


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='xft plot-log',
        description='Plot the loss and learning-rate curves of a training run as a PNG.')
    parser.add_argument('work_dir', help='the run\'s work dir (or one vis_data/scalars.json file)')
    parser.add_argument('--out', help=f'PNG to write (default: WORK_DIR/{DEFAULT_PNG})')
    parser.add_argument('--keys', nargs='+', default=list(DEFAULT_KEYS),
                        help='logged scalars to plot, one panel each (default: loss lr)')
    parser.add_argument('--all-runs', action='store_true',
                        help='join every run in the work dir (e.g. before and after a resume)')
    return parser.parse_args(argv)


def plot(args) -> None:
    print(plot_work_dir(args.work_dir, args.out, tuple(args.keys), args.all_runs))


def main(argv=None) -> int:
    return run_command('plot-log', plot, parse_args(argv))


if __name__ == '__main__':
    raise SystemExit(main())
