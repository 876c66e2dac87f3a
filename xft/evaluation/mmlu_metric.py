"""``MMLUMetric``: MMLU accuracy during training, from one forward pass per question.

XTuner's ``*_mmlu_e3`` configs evaluate on qlora's five-shot MMLU files (rows with ``input``,
``output`` = 'A'-'D' and ``subject``)::

    val_dataloader = dict(batch_size=1, dataset=dict(type=process_hf_dataset, dataset=mmlu_fs_dataset,
                          tokenizer=tokenizer, dataset_map_fn=default_map_fn, max_length=max_length,
                          input_ids_with_output=False, pack_to_max_length=False, split='val'),
                          sampler=dict(type=DefaultSampler, shuffle=False),
                          collate_fn=dict(type=mmlu_collate_fn))
    val_evaluator = dict(type=MMLUMetric, tokenizer=tokenizer, prefix='mmlu_fs_val')
    val_cfg = dict(type='ValLoop')

The model's answer is the letter among A-D whose token has the highest logit at the last token of
the prompt. Accuracies are in percent, per subject, per subcategory and per category (MMLU's
grouping), and ``average`` is the mean over the subjects present. XTuner found the last token
as the one before the first pad id, which is wrong wherever the pad id (0) is also a real
token inside the prompt; here it is read from the attention mask.
"""
from typing import Sequence

import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from xft.dataset.collate_fns.mmlu_collate_fn import CHOICES
from xft.registry import build_nested
from xft.utils.errors import ConfigError

# MMLU's grouping: category -> subcategory -> subjects (57 subjects in all).
CATEGORIES = {
    'STEM': {
        'physics': ('astronomy', 'college_physics', 'conceptual_physics', 'high_school_physics'),
        'chemistry': ('college_chemistry', 'high_school_chemistry'),
        'biology': ('college_biology', 'high_school_biology'),
        'computer science': ('college_computer_science', 'computer_security', 'high_school_computer_science',
                             'machine_learning'),
        'math': ('abstract_algebra', 'college_mathematics', 'elementary_mathematics', 'high_school_mathematics',
                 'high_school_statistics'),
        'engineering': ('electrical_engineering',),
    },
    'humanities': {
        'history': ('high_school_european_history', 'high_school_us_history', 'high_school_world_history',
                    'prehistory'),
        'philosophy': ('formal_logic', 'logical_fallacies', 'moral_disputes', 'moral_scenarios', 'philosophy',
                       'world_religions'),
        'law': ('international_law', 'jurisprudence', 'professional_law'),
    },
    'social sciences': {
        'politics': ('high_school_government_and_politics', 'public_relations', 'security_studies',
                     'us_foreign_policy'),
        'culture': ('human_sexuality', 'sociology'),
        'economics': ('econometrics', 'high_school_macroeconomics', 'high_school_microeconomics'),
        'geography': ('high_school_geography',),
        'psychology': ('high_school_psychology', 'professional_psychology'),
    },
    'other (business, health, misc.)': {
        'other': ('global_facts', 'miscellaneous', 'professional_accounting'),
        'business': ('business_ethics', 'management', 'marketing'),
        'health': ('anatomy', 'clinical_knowledge', 'college_medicine', 'human_aging', 'medical_genetics',
                   'nutrition', 'professional_medicine', 'virology'),
    },
}
SUBCATEGORY_OF = {subject: sub for groups in CATEGORIES.values() for sub, subjects in groups.items()
                  for subject in subjects}
CATEGORY_OF = {sub: category for category, groups in CATEGORIES.items() for sub in groups}


class MMLUMetric(BaseMetric):
    """Multiple-choice accuracy from the logits (see the module docstring).

    Args:
        tokenizer: the tokenizer (or its config dict); each of A, B, C, D must be one token.
        prefix: the metrics' prefix in the log (``mmlu_fs_val/average``).
    """

    default_prefix = 'mmlu'

    def __init__(self, tokenizer, *args, **kwargs):
        super().__init__(*args, **kwargs)
        tokenizer = build_nested(dict(tokenizer)) if isinstance(tokenizer, dict) else tokenizer
        self.choice_ids = [_single_token(tokenizer, letter) for letter in CHOICES]

    def process(self, data_batch, data_samples: Sequence) -> None:
        truth = data_batch['data_samples']
        last = data_batch['data']['attention_mask'].sum(dim=1) - 1
        for row, (sample, answer, subject) in enumerate(zip(data_samples, truth['labels'], truth['subjects'])):
            logits = sample['logits'] if isinstance(sample, dict) else sample
            predicted = int(torch.argmax(logits[int(last[row]), self.choice_ids]))
            self.results.append((subject, predicted, CHOICES.index(answer)))

    def compute_metrics(self, results: list) -> dict:
        metrics = mmlu_accuracies(results)
        print_log(format_table(metrics), logger='current')
        return metrics


def mmlu_accuracies(results) -> dict:
    """Accuracy in percent per subject, subcategory, category, and their ``average`` over subjects.

    >>> metrics = mmlu_accuracies([('anatomy', 1, 1), ('anatomy', 0, 2), ('astronomy', 3, 3)])
    >>> metrics['anatomy'], metrics['health'], metrics['STEM'], metrics['average']
    (50.0, 50.0, 100.0, 75.0)
    """
    groups = {}
    for subject, predicted, answer in results:
        sub = SUBCATEGORY_OF.get(subject)
        names = (subject, sub, CATEGORY_OF[sub]) if sub else (subject,)
        for level, name in enumerate(names):
            groups.setdefault((level, name), []).append(predicted == answer)
    percent = {key: 100.0 * sum(hits) / len(hits) for key, hits in groups.items()}
    metrics = {name: value for level in range(3) for (at, name), value in percent.items() if at == level}
    subjects = [value for (level, _), value in percent.items() if level == 0]
    metrics['average'] = sum(subjects) / len(subjects) if subjects else 0.0
    return metrics


def format_table(metrics: dict) -> str:
    rows = [(name, metrics[name]) for name in (*CATEGORIES, 'average') if name in metrics]
    width = max(len(name) for name, _ in rows)
    return '\n'.join(['MMLU accuracy (%)'] + [f'  {name:<{width}}  {value:5.1f}' for name, value in rows])


def _single_token(tokenizer, letter) -> int:
    ids = tokenizer.encode(letter, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError(f'MMLUMetric: the tokenizer encodes the answer {letter!r} as {len(ids)} tokens {ids}; '
                          'it needs one token per choice')
    return ids[0]

