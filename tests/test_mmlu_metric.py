"""MMLU evaluation during training (XTuner's ``MMLUMetric`` and ``mmlu_collate_fn``).

The model's answer is the choice letter with the highest logit at the prompt's last token;
accuracies are in percent per subject, subcategory and category, and ``average`` is the mean
over subjects. The end-to-end test trains the tiny model with lr 0 (so the model the
evaluation sees is the saved one) and checks the logged accuracies against answers planted
from a separate forward pass: all right in one subject, half in another.
"""
import json

import pytest
import torch
from datasets import load_dataset
from helpers.training import logged_losses, train_in_process, write_tiny_config
from transformers import AutoModelForCausalLM

from xft.dataset import process_hf_dataset
from xft.dataset.collate_fns import default_collate_fn, mmlu_collate_fn
from xft.dataset.map_fns import default_map_fn, template_map_fn_factory
from xft.evaluation import MMLUMetric
from xft.evaluation.mmlu_metric import mmlu_accuracies
from xft.utils import PROMPT_TEMPLATE
from xft.utils.errors import ConfigError, DataError

LETTERS = 'ABCD'


def test_the_answer_is_read_at_the_last_token_of_the_attention_mask(tiny_tokenizer):
    """Right-padded rows whose prompts hold the pad id 0 as a real token: XTuner took the
    token before the first 0; the mask says where each prompt ends."""
    metric = MMLUMetric(tokenizer=tiny_tokenizer)
    choice = metric.choice_ids
    rows = [{'input_ids': [5, 0, 9, 11], 'labels': [-100] * 4, 'output': 'C', 'subject': 'anatomy'},
            {'input_ids': [7, 0, 8], 'labels': [-100] * 3, 'output': 'B', 'subject': 'astronomy'}]
    batch = mmlu_collate_fn(rows)
    assert batch['data']['attention_mask'].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    logits = torch.zeros(2, 4, 512)
    logits[0, 3, choice[2]] = 5.0  # row 0's last token says C (right)
    logits[0, 0, choice[0]] = 9.0  # ...while the token before the 0 says A
    logits[1, 2, choice[3]] = 5.0  # row 1's last token says D (wrong: B)
    logits[1, 0, choice[1]] = 9.0
    metric.process(batch, list(logits))
    assert metric.results == [('anatomy', 2, 2), ('astronomy', 3, 1)]
    # model outputs as dicts of logits are read the same way
    metric.results.clear()
    metric.process(batch, [{'logits': row} for row in logits])
    assert metric.results == [('anatomy', 2, 2), ('astronomy', 3, 1)]


def test_accuracies_per_subject_subcategory_category_and_the_mean_over_subjects():
    results = ([('anatomy', 0, 0)] * 3 + [('anatomy', 1, 0)]          # 75 %
               + [('virology', 2, 2)] * 2                             # 100 % (health too)
               + [('astronomy', 0, 1)] * 2                            # 0 %
               + [('a_subject_of_my_own', 3, 3)])                     # counted as a subject only
    metrics = mmlu_accuracies(results)
    assert metrics['anatomy'] == 75.0 and metrics['virology'] == 100.0 and metrics['astronomy'] == 0.0
    assert metrics['health'] == pytest.approx(100 * 5 / 6)  # the questions of both its subjects
    assert metrics['other (business, health, misc.)'] == pytest.approx(100 * 5 / 6)
    assert metrics['physics'] == metrics['STEM'] == 0.0
    assert metrics['a_subject_of_my_own'] == 100.0
    assert metrics['average'] == pytest.approx((75 + 100 + 0 + 100) / 4)
    assert 'humanities' not in metrics  # no question from it: no made-up 0 %


def test_a_tokenizer_that_splits_a_choice_letter_is_refused():
    class SplitsLetters:
        def encode(self, text, add_special_tokens=False):
            return [1, 2]

    with pytest.raises(ConfigError, match="encodes the answer 'A' as 2 tokens"):
        MMLUMetric(tokenizer=SplitsLetters())


@pytest.mark.parametrize('row, message', [
    ({'input_ids': [1, 2], 'labels': [-100, -100], 'subject': 'anatomy'}, 'needs output'),
    ({'input_ids': [1, 2], 'labels': [-100, -100], 'output': 'E', 'subject': 'anatomy'},
     "output must be one of A, B, C, D, got 'E'"),
])
def test_rows_without_an_answer_letter_are_refused_in_one_line(row, message):
    with pytest.raises(DataError, match=message):
        mmlu_collate_fn([row])


def test_the_hf_format_is_default_collate_fns():
    rows = [{'input_ids': [1, 2, 3], 'labels': [-100, -100, -100], 'output': 'A', 'subject': 'anatomy'}]
    got, want = mmlu_collate_fn(rows, return_hf_format=True), default_collate_fn(rows, return_hf_format=True)
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


# ----------------------------------------------------------------------------- end to end

QUESTIONS = {
    'anatomy': ['Which organ pumps blood?', 'Where is the femur?', 'What do lungs exchange?',
                'Which bone protects the brain?'],
    'astronomy': ['What orbits the earth?', 'Which planet is red?'],
}

VAL_PART = '''
from mmengine.runner import ValLoop
from xft.dataset.collate_fns import mmlu_collate_fn
from xft.dataset.map_fns import default_map_fn
from xft.evaluation import MMLUMetric

val_dataloader = dict(
    batch_size=3,
    num_workers=0,
    dataset=dict(
        type=process_hf_dataset,
        dataset=dict(type=load_dataset, path='json', data_files=dict(val='@MMLU@')),
        tokenizer=tokenizer,
        max_length=max_length,
        dataset_map_fn=default_map_fn,
        template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
        input_ids_with_output=False,
        pack_to_max_length=False,
        split='val',
        map_num_proc=1),
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=mmlu_collate_fn))
val_evaluator = dict(type=MMLUMetric, tokenizer=tokenizer, prefix='mmlu_fs_val')
val_cfg = dict(type=ValLoop)
train_cfg = dict(type=TrainLoop, max_iters=2, val_interval=2)
'''


def prompt(question):
    return f'{question}\nA. one\nB. two\nC. three\nD. four\nAnswer:'


def predicted_letters(model_dir, tokenizer, questions, folder):
    """The letter the untrained model picks for each question: one forward pass per prompt,
    the prompts encoded as the config's val dataset encodes them (chatml, prompt only)."""
    questions_file = folder / 'questions.json'
    questions_file.write_text(json.dumps([{'input': prompt(q), 'output': 'A'} for q in questions]))
    encoded = process_hf_dataset(
        dataset=load_dataset('json', data_files=dict(val=str(questions_file)))['val'], tokenizer=tokenizer,
        max_length=128, dataset_map_fn=default_map_fn, input_ids_with_output=False, split='val', pack_to_max_length=False,
        template_map_fn=template_map_fn_factory(template=PROMPT_TEMPLATE.chatml), map_num_proc=1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    choice_ids = [tokenizer.encode(letter, add_special_tokens=False)[0] for letter in LETTERS]
    letters = []
    for row in encoded:
        assert row['labels'] == [-100] * len(row['input_ids'])  # the prompt alone, nothing trained
        with torch.no_grad():
            last = model(input_ids=torch.tensor([row['input_ids']])).logits[0, -1]
        letters.append(LETTERS[int(torch.argmax(last[choice_ids]))])
    return letters


def test_mmlu_accuracy_is_logged_during_training(tmp_path, tiny_llama_dir, tiny_tokenizer, shared_data, capsys):
    questions = [(subject, q) for subject, items in QUESTIONS.items() for q in items]
    picked = predicted_letters(tiny_llama_dir, tiny_tokenizer, [q for _, q in questions], tmp_path)
    rows = []
    for i, ((subject, question), letter) in enumerate(zip(questions, picked)):
        # anatomy: every answer is the model's pick; astronomy: the first only
        right = subject == 'anatomy' or i == len(QUESTIONS['anatomy'])
        answer = letter if right else LETTERS[(LETTERS.index(letter) + 1) % 4]
        rows.append({'input': prompt(question), 'output': answer, 'subject': subject})
    mmlu_file = tmp_path / 'mmlu_val.json'
    mmlu_file.write_text(json.dumps(rows))
    config = write_tiny_config(tmp_path, tiny_llama_dir, shared_data / 'alpaca' / 'alpaca_data_subset.json')
    config.write_text(config.read_text().replace('lr = 3e-3', 'lr = 0.0')  # the evaluated model = the base
                      + VAL_PART.replace('@MMLU@', str(mmlu_file)))

    run = train_in_process(config, '--work-dir', tmp_path / 'work')

    assert 'MMLU accuracy (%)' in run.log
    metrics = {}
    for run in (tmp_path / 'work').iterdir():
        scalars = run / 'vis_data' / 'scalars.json'
        if scalars.is_file():
            for line in scalars.read_text().splitlines():
                metrics.update({k: v for k, v in json.loads(line).items() if k.startswith('mmlu_fs_val/')})
    assert logged_losses(tmp_path / 'work')  # it trained
    assert metrics['mmlu_fs_val/anatomy'] == 100.0
    assert metrics['mmlu_fs_val/astronomy'] == 50.0
    assert metrics['mmlu_fs_val/average'] == 75.0
    assert metrics['mmlu_fs_val/STEM'] == 50.0  # astronomy is physics, STEM
    assert metrics['mmlu_fs_val/health'] == 100.0
    # A trial run skips the validation loop (and says so).
    capsys.readouterr()
    trial = train_in_process(config, '--work-dir', tmp_path / 'trial', '--max-iters', '1')
    console = capsys.readouterr()  # the trial-run line comes before the run's log file exists
    assert 'trial run: 1 iterations, each logged; the validation loop skipped' in console.out + console.err
    assert 'MMLU accuracy (%)' not in trial.log
