"""Metrics a config's ``val_evaluator`` / ``test_evaluator`` names (XTuner's
``xtuner.evaluation``): ``MMLUMetric``, multiple-choice accuracy read from the logits."""
from .mmlu_metric import MMLUMetric

__all__ = ['MMLUMetric']
