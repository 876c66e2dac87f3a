"""``ConcatDataset``: several processed datasets, each given as a config, trained as one."""
from torch.utils.data import ConcatDataset as TorchConcatDataset

from xft.registry import build_nested


class ConcatDataset(TorchConcatDataset):
    """XTuner's ``ConcatDataset(datasets=[dict(type=process_hf_dataset, ...), ...])``.

    ``length`` joins the parts' per-row token counts, for ``LengthGroupedSampler``.
    """

    def __init__(self, datasets):
        super().__init__([build_nested(cfg) if isinstance(cfg, dict) else cfg
                          for cfg in datasets])

    @property
    def length(self):
        return [n for part in self.datasets for n in _lengths(part)]


def _lengths(dataset):
    lengths = getattr(dataset, 'length', None)
    return list(lengths) if lengths is not None else list(dataset['length'])
