"""Progress of a command made of a few long steps (read, merge, write): one line a step."""
import time


class StepProgress:
    """Prints ``[i/n] what ...`` as each of ``total`` steps starts; ``elapsed()`` since creation.

    >>> progress = StepProgress(2)
    >>> progress.step('reading the checkpoint')
    [1/2] reading the checkpoint ...
    >>> progress.elapsed() >= 0
    True
    """

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        print(f'[{self.done}/{self.total}] {what} ...', flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
