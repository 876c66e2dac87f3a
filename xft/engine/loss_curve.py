"""Reading a run's logged scalars and drawing them: the core behind ``LossCurveHook`` and
``xft plot-log``.

mmengine's ``LocalVisBackend`` appends one JSON object per logged iteration to
``<work_dir>/<timestamp>/vis_data/scalars.json``, e.g.
``{"lr": 0.0002, "loss": 1.93, "iter": 10, "time": 0.41, ...}``. This reads the newest such
file of a work dir (every one of them with ``all_runs``, so a resumed run continues the curve)
and plots each iteration's loss and learning rate. It lives in the engine, below the command
(``xft/tools/plot_log.py``), because the training hook draws the same picture.
"""
import json
from pathlib import Path

from xft.utils.errors import UserError

SCALARS = Path('vis_data') / 'scalars.json'
DEFAULT_PNG = 'loss_curve.png'
# Scalars plotted when present, each in its own panel, top to bottom.
DEFAULT_KEYS = ('loss', 'lr')


def find_scalar_files(path, all_runs=False) -> list:
    """The scalars.json files of a work dir (newest run last), or ``[path]`` for a file: for
    ``work_dirs/NAME`` that is ``[work_dirs/NAME/20261129_170105/vis_data/scalars.json]``.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f'{path}: no such work dir or scalars.json file')
    found = sorted(path.glob(f'*/{SCALARS}')) or ([path / SCALARS] if (path / SCALARS).is_file() else [])
    if not found:
        raise UserError(f'{path}: no */{SCALARS} here; is it the work dir of a run that logged '
                        'at least one iteration?')
    return found if all_runs else found[-1:]


def read_scalars(files) -> list:
    """The logged rows of ``files`` in order, one dict per logged iteration."""
    rows = []
    for path in files:
        for number, line in enumerate(Path(path).read_text(encoding='utf-8').splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f'{path} line {number}: invalid JSON ({error.msg})') from None
            if isinstance(row, dict):
                rows.append(row)
    return rows


def series(rows, key) -> tuple:
    """(iterations, values) of one scalar; a later row for the same iteration wins (resume)."""
    points = {}
    for row in rows:
        if key in row and 'iter' in row:
            points[int(row['iter'])] = float(row[key])
    iterations = sorted(points)
    return iterations, [points[i] for i in iterations]


def plot_scalars(rows, out_path, keys=DEFAULT_KEYS, title=None) -> Path:
    """Write a PNG with one panel per key found in ``rows``; return its path."""
    import matplotlib
    matplotlib.use('Agg')  # no display on training machines
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [(key, *series(rows, key)) for key in keys]
    panels = [panel for panel in panels if panel[1]]
    if not panels:
        raise UserError(f'none of {", ".join(keys)} was logged; nothing to plot')
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 3 * len(panels)), sharex=True,
                                squeeze=False)
    for axis, (key, iterations, values) in zip(axes[:, 0], panels):
        # Dots too when there are few points, so a short run still shows where they are.
        axis.plot(iterations, values, linewidth=1.2, marker='o' if len(values) <= 50 else None,
                  markersize=3)
        axis.set_ylabel(key)
        axis.grid(True, alpha=0.3)
        if key == 'lr':
            axis.ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))
    axes[-1, 0].set_xlabel('iteration')
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        axes[0, 0].set_title(title)
    figure.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return out_path


def plot_work_dir(work_dir, out_path=None, keys=DEFAULT_KEYS, all_runs=False) -> Path:
    """Plot the run(s) of ``work_dir`` into ``out_path`` (default: WORK_DIR/loss_curve.png)."""
    files = find_scalar_files(work_dir, all_runs)
    work_dir = Path(work_dir)
    default_dir = work_dir if work_dir.is_dir() else work_dir.parent
    out_path = Path(out_path) if out_path else default_dir / DEFAULT_PNG
    title = work_dir.name if work_dir.is_dir() else None
    return plot_scalars(read_scalars(files), out_path, keys, title)
