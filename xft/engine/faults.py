"""What a training run does when the world misbehaves: the error a failed save stops with, and
writing files so that a killed process never leaves a half-written one under a real name
(a NaN loss has its own module, ``xft.engine.nonfinite``).

A checkpoint (file or DeepSpeed folder) is written under a hidden partial name beside its
final name and renamed into place only when complete; ``last_checkpoint`` is replaced the
same way, and only after that. A process killed at any moment therefore leaves the previous
checkpoint and a ``last_checkpoint`` that names it.
"""
import errno
import os
import shutil
from pathlib import Path

from xft.utils.errors import UserError

# errno values that mean "the bytes did not fit": a full disk, a quota, a file size limit.
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

PARTIAL_PREFIX = '.partial-'


class CheckpointSaveError(UserError):
    """A checkpoint could not be written; the previous one is intact."""


def partial_path(final_path) -> Path:
    """The hidden name a checkpoint is written under before it is complete.

    >>> partial_path('work_dirs/run/iter_20.pth')
    PosixPath('work_dirs/run/.partial-iter_20.pth')
    """
    final_path = Path(final_path)
    return final_path.with_name(PARTIAL_PREFIX + final_path.name)


def remove_path(path) -> None:
    """Remove a file or a folder (DeepSpeed checkpoints are folders); absent is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def remove_partial_checkpoints(folder) -> list:
    """Remove what a killed save left behind; returns the names removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    leftovers = sorted(folder.glob(PARTIAL_PREFIX + '*'))
    for path in leftovers:
        remove_path(path)
    return [path.name for path in leftovers]


def _fsync_folder(folder) -> None:
    """Make a rename durable: the folder entry, not only the file, must reach the disk."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob('*') if p.is_file()]
    for file in files:
        with open(file, 'rb') as handle:
            os.fsync(handle.fileno())


def publish(partial, final) -> None:
    """Move a completely written ``partial`` onto ``final`` in one step (``os.replace``)."""
    partial, final = Path(partial), Path(final)
    _fsync_tree(partial)
    if final.is_dir() and not final.is_symlink():
        # os.replace cannot replace a non-empty folder; a re-saved DeepSpeed step is rare.
        shutil.rmtree(final)
    os.replace(partial, final)
    _fsync_folder(final.parent)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a part.

    >>> atomic_write_text('/tmp/xft_doctest_last_checkpoint', 'work_dirs/run/iter_20.pth')
    >>> open('/tmp/xft_doctest_last_checkpoint').read()
    'work_dirs/run/iter_20.pth'
    """
    path = Path(path)
    partial = partial_path(path)
    with open(partial, 'w', encoding='utf-8') as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    _fsync_folder(path.parent)


def is_out_of_space(error: BaseException) -> bool:
    """True for a write that failed because the disk, the quota or the file size limit is full."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


def save_failure_message(final_path, error: BaseException, last_good) -> str:
    """The one line a user reads when a checkpoint could not be written."""
    if is_out_of_space(error):
        reason = f'no space left on the device (or the file size limit was reached): {error}'
    else:
        reason = f'{type(error).__name__}: {error}'
    kept = f'the last good checkpoint {last_good} is intact' if last_good else 'no earlier checkpoint exists'
    return f'{final_path}: checkpoint not saved, {reason}; {kept}'
