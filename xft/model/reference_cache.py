"""The reference's log-probabilities of each answer, remembered after the first epoch.

DPO's reference never changes, so the log-probability it gives an answer is the same every time
the pair comes back: a DPO step after the first epoch need not run the reference at all (XTuner's
DPO configs train 3 epochs, so two thirds of the reference forwards are saved). A sequence is
known by a hash of its token ids and of which of them are trained, so the cache needs no dataset
index and holds whatever layout the pair arrives in (packed with other pairs or alone). Each
entry is two floats; 40k pairs take a few MB. Values are stored exactly as computed, so a cached
step computes the same loss as an uncached one.
"""
import hashlib
from typing import Dict, List, Optional, Tuple

import torch

from xft.utils.constants import IGNORE_INDEX


def sequence_keys(input_ids: torch.Tensor, labels: torch.Tensor,
                  sequence_index: torch.Tensor) -> List[bytes]:
    """One key per sequence (in sequence order): a hash of its ids and its trained positions.

    >>> ids = torch.tensor([[5, 6, 7, 5, 6, 8]])
    >>> labels = torch.tensor([[-100, 6, 7, -100, 6, 8]])
    >>> keys = sequence_keys(ids, labels, torch.tensor([[0, 0, 0, 1, 1, 1]]))
    >>> len(keys), keys[0] != keys[1]
    (2, True)
    """
    ids = input_ids.detach().cpu().reshape(-1)
    trained = (labels.detach().cpu().reshape(-1) != IGNORE_INDEX)
    index = sequence_index.detach().cpu().reshape(-1)
    count = int(index.max()) + 1 if index.numel() else 0
    keys = []
    for number in range(count):
        where = index == number
        digest = hashlib.blake2b(digest_size=16)
        digest.update(ids[where].to(torch.int64).numpy().tobytes())
        digest.update(trained[where].numpy().tobytes())
        keys.append(digest.digest())
    return keys


class ReferenceCache:
    """Per-sequence reference values (sum of log-probabilities, trained tokens) by key."""

    def __init__(self):
        self._values: Dict[bytes, Tuple[float, float]] = {}
        self._dtype = torch.float32
        self.hits = 0
        self.misses = 0

    def __len__(self):
        return len(self._values)

    def lookup(self, keys: List[bytes], device) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(sums, counts) of every key, or None when one of them is not cached yet."""
        found = [self._values.get(key) for key in keys]
        if any(value is None for value in found):
            self.misses += 1
            return None
        self.hits += 1
        # Python floats hold float32 and float64 values exactly: the round trip changes nothing.
        values = torch.tensor(found, dtype=self._dtype, device=device)
        return values[:, 0], values[:, 1]

    def store(self, keys: List[bytes], sums: torch.Tensor, counts: torch.Tensor) -> None:
        self._dtype = sums.dtype
        for key, total, count in zip(keys, sums.tolist(), counts.tolist()):
            self._values[key] = (total, count)
