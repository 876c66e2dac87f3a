"""``PreferenceAccuracy``: how often a model ranks held-out pairs right.

The preference models' ``forward(mode='predict')`` gives one ``{'chosen', 'rejected'}`` score per
pair (DPO's implicit rewards, ORPO's scaled log-probabilities, a reward model's scores); a pair
counts as right when the chosen answer scores strictly higher. Config, with held-out pairs set
aside from the training file (``build_preference_dataset(held_out=..., subset='held_out')``)::

    val_dataloader = dict(batch_size=4, dataset=dict(train_dataset, held_out=0.05,
                          subset='held_out'), sampler=dict(type=DefaultSampler, shuffle=False),
                          collate_fn=dict(type=preference_collate_fn))
    val_evaluator = dict(type=PreferenceAccuracy)
    val_cfg = dict(type=ValLoop)

Logged as ``accuracy``, ``chosen_score``, ``rejected_score`` and ``margin`` (means over the
held-out pairs) and ``pairs``; ties count as wrong, so a model that cannot tell the answers
apart scores 0, not 0.5.
"""
from typing import Sequence

from mmengine.evaluator import BaseMetric


class PreferenceAccuracy(BaseMetric):
    """Held-out pair accuracy and mean scores (see the module docstring)."""

    default_prefix = 'preference'

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append((float(sample['chosen']), float(sample['rejected'])))

    def compute_metrics(self, results) -> dict:
        return preference_accuracy(results)


def preference_accuracy(pairs) -> dict:
    """Accuracy and mean scores of (chosen score, rejected score) pairs.

    >>> preference_accuracy([(1.0, 0.0), (0.5, 0.5), (-1.0, 2.0), (3.0, 1.0)])
    {'accuracy': 0.5, 'chosen_score': 0.875, 'rejected_score': 0.875, 'margin': 0.0, 'pairs': 4}
    """
    pairs = list(pairs)
    if not pairs:
        return {'accuracy': 0.0, 'chosen_score': 0.0, 'rejected_score': 0.0, 'margin': 0.0,
                'pairs': 0}
    n = len(pairs)
    chosen = sum(c for c, _ in pairs) / n
    rejected = sum(r for _, r in pairs) / n
    return {'accuracy': sum(c > r for c, r in pairs) / n, 'chosen_score': chosen,
            'rejected_score': rejected, 'margin': chosen - rejected, 'pairs': n}
