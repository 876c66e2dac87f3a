"""An optimizer step's loss is the mean over every trained token of the step.

Two alpaca rows of very different lengths (a few answer tokens against hundreds) make one SGD
step three ways: one micro-batch of 2, two micro-batches of 1 with gradient accumulation, and
two gloo processes with one each. The weights after the step (-lr x gradient; LoRA B starts
at 0) agree. The control: the mean of per-micro-batch means (XTuner's and mmengine's, kept as
``train_cfg.loss_normalization='micro_batch'``) gives another step on the same data.
"""
import doctest
import json
import sys

import pytest
import torch
from helpers.paths import REPO
from helpers.training import TINY_CONFIG as TEMPLATE, free_port, logged_losses, run_launched, run_train, train_env
from mmengine.optim import OptimWrapper
from peft import LoraConfig
from transformers import AutoModelForCausalLM

import xft.engine.token_weighting as token_weighting
from xft.engine.checkpoint import load_checkpoint_file
from xft.engine.token_weighting import StepWindows, TokenWeightedOptimWrapper
from xft.model import SupervisedFinetune
from xft.model.loss import count_trained_tokens
from xft.utils.constants import IGNORE_INDEX

ONE_STEP = ('model.lora.lora_dropout=0.0', 'param_scheduler.0.start_factor=1.0',
            'default_hooks.checkpoint.interval=1', 'log_processor.window_size=1')


def test_docstring_examples():
    result = doctest.testmod(token_weighting)
    assert result.attempted > 0 and result.failed == 0


def test_trained_tokens_are_counted_after_the_shift():
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, IGNORE_INDEX], [7, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    # Row 0 scores 5 and 6; row 1's only label sits at position 0, which nothing predicts.
    assert count_trained_tokens(labels) == 2


class FakeBatches:
    """Batches whose labels hold ``n`` trained tokens each, numbered like dataset rows."""

    def __init__(self, token_counts):
        self._counts = iter(token_counts)
        self._row = -1
        self.last_indices = None

    def __next__(self):
        n = next(self._counts)
        self._row += 1
        self.last_indices = [self._row]
        labels = torch.full((1, 8), IGNORE_INDEX)
        labels[0, 1:1 + n] = 1
        return {'data': {'labels': labels}, 'data_samples': None}


def test_windows_count_their_micro_batches_and_the_last_window_may_be_short():
    windows = StepWindows(FakeBatches([1, 3, 2, 4, 5]), accumulation=2, max_iters=5)
    handed = [windows.next(i) for i in range(5)]
    assert [m.n_tokens for m in handed] == [1, 3, 2, 4, 5]
    assert [m.step_tokens for m in handed] == [4, 4, 6, 6, 5]
    assert [m.indices for m in handed] == [[0], [1], [2], [3], [4]]


def test_a_resume_inside_a_window_counts_the_micro_batches_trained_before_the_save():
    windows = StepWindows(FakeBatches([1, 3, 2, 4, 5, 7]), accumulation=3, max_iters=6)
    windows.skip(4)  # iterations 0-3 done: window [3, 6) has had one micro-batch (4 tokens)
    assert [(m.n_tokens, m.step_tokens) for m in (windows.next(4), windows.next(5))] == [(5, 16), (7, 16)]


def test_token_weighting_over_accumulation_with_a_short_last_window():
    """Three micro-batches, accumulation 2: windows {0, 1} and {2}; each step's gradient is the
    mean over its own tokens, the short last window's included."""
    weight = torch.nn.Parameter(torch.zeros(()))
    inner = OptimWrapper(torch.optim.SGD([weight], lr=1.0), accumulative_counts=2)
    inner.initialize_count_status(torch.nn.Linear(1, 1), 0, 3)
    wrapper = TokenWeightedOptimWrapper(inner, ranks=1)
    windows = StepWindows(FakeBatches([1, 3, 2]), accumulation=2, max_iters=3)
    token_loss_sums = [2.0, 30.0, 8.0]
    for iteration, token_sum in enumerate(token_loss_sums):
        micro_batch = windows.next(iteration)
        wrapper.set_micro_batch(micro_batch.n_tokens, micro_batch.step_tokens)
        wrapper.update_params(weight * (token_sum / micro_batch.n_tokens))  # the model's mean
    assert weight.item() == pytest.approx(-(2.0 + 30.0) / 4 - 8.0 / 2)


@pytest.mark.parametrize('fast_path', [True, False])
def test_a_micro_batch_without_trained_tokens_gives_a_zero_loss_not_nan(tiny_llama_dir, fast_path):
    lora = dict(type=LoraConfig, r=4, lora_alpha=8, lora_dropout=0.0, task_type='CAUSAL_LM')
    model = SupervisedFinetune(llm=dict(type=AutoModelForCausalLM.from_pretrained,
                                        pretrained_model_name_or_path=str(tiny_llama_dir), dtype=torch.float32),
                               lora=lora, use_fast_path=fast_path)
    model.train()
    ids = torch.randint(10, 500, (1, 9), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 0] = 7  # position 0 is never scored: still nothing to train
    loss = model({'input_ids': ids, 'labels': labels, 'attention_mask': torch.ones_like(ids)})['loss']
    assert loss.item() == 0.0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)


# ----------------------------------------------------------------------------- end to end

def short_and_long_rows(shared_data):
    """Two real alpaca rows without input: the shortest answer and a long one (under 900
    characters, so the row stays below the tiny model's 512 positions)."""
    rows = [row for row in json.loads((shared_data / 'alpaca' / 'alpaca_data_subset.json').read_text())
            if not row['input'] and row['output'].strip()]
    short = min(rows, key=lambda row: len(row['output']))
    long = max((row for row in rows if len(row['output']) < 900), key=lambda row: len(row['output']))
    return [short, long]


def sgd_config(folder, model_dir, data_file):
    """The test suite's tiny LoRA config with plain SGD (lr 1, no clipping): the step moves each
    weight by exactly minus its gradient, which is what the runs compare."""
    text = (TEMPLATE.read_text().replace('@MODEL@', str(model_dir)).replace('@DATA@', str(data_file))
            .replace('@LORA@', 'lora').replace('@QUANTIZATION@', 'None'))
    replacements = {
        'optimizer=dict(type=AdamW, lr=lr, betas=(0.9, 0.999), weight_decay=0),':
            'optimizer=dict(type=SGD, lr=lr),',
        '    clip_grad=dict(max_norm=1, error_if_nonfinite=False),\n': '',
        'from torch.optim import AdamW': 'from torch.optim import SGD',
        'lr = 3e-3': 'lr = 1.0',
        'max_length = 128': 'max_length = 512',
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = folder / 'sgd.py'
    path.write_text(text)
    return path


@pytest.fixture(scope='module')
def two_rows(tmp_path_factory, tiny_llama_dir, tiny_tokenizer, shared_data):
    folder = tmp_path_factory.mktemp('token_weighted')
    rows = short_and_long_rows(shared_data)
    lengths = [len(tiny_tokenizer(row['output'])['input_ids']) for row in rows]
    assert lengths[1] > 20 * lengths[0], lengths  # what makes the two normalisations differ
    data = folder / 'two_rows.json'
    data.write_text(json.dumps(rows))
    return folder, sgd_config(folder, tiny_llama_dir, data)


def one_step(config, work_dir, batch_size, accumulation, extra=()):
    iterations = 2 // batch_size
    run_train(config, '--work-dir', work_dir, '--cfg-options', *ONE_STEP, f'train_dataloader.batch_size={batch_size}',
              f'optim_wrapper.accumulative_counts={accumulation}', f'train_cfg.max_iters={iterations}', *extra)
    return load_checkpoint_file(work_dir / f'iter_{iterations}.pth')['state_dict']


def two_processes_one_step(config, work_dir):
    env = train_env(NPROC_PER_NODE='2', PORT=str(free_port()))
    result = run_launched([sys.executable, '-m', 'xft.cli', 'train', config, '--work-dir', work_dir,
                           '--cfg-options', *ONE_STEP, 'train_dataloader.batch_size=1',
                           'optim_wrapper.accumulative_counts=1', 'train_cfg.max_iters=1'], env=env, cwd=REPO)
    # A rank's own error line first: torchrun's summary of the failed ranks fills the tail.
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith('xft ')]
    assert result.returncode == 0, '\n'.join(errors) + '\n' + result.stderr[-3000:]
    assert 'gloo process group: rank 1 of 2' in result.stdout + result.stderr
    return load_checkpoint_file(work_dir / 'iter_1.pth')['state_dict']


@pytest.fixture(scope='module')
def batch_of_two(two_rows):
    """The reference: one micro-batch holding both rows (the loss is then the plain mean over
    their tokens, whatever the normalisation)."""
    folder, config = two_rows
    state = one_step(config, folder / 'batch2', batch_size=2, accumulation=1)
    step = max(float(value.abs().max()) for value in state.values())
    assert step > 1e-3, 'the step moved nothing: the comparisons would prove nothing'
    return state, step, logged_losses(folder / 'batch2')[1]


def max_difference(one: dict, other: dict) -> float:
    assert sorted(one) == sorted(other) and len(one) == 28
    return max(float((one[name] - other[name]).abs().max()) for name in one)


def test_batch_of_two_equals_accumulation_of_two_equals_two_gloo_processes(tmp_path, two_rows, batch_of_two):
    _, config = two_rows
    batch, step, batch_loss = batch_of_two
    accumulated = one_step(config, tmp_path / 'accumulation2', batch_size=1, accumulation=2)
    distributed = two_processes_one_step(config, tmp_path / 'ddp2')
    assert max_difference(accumulated, batch) < 1e-5 * step
    assert max_difference(distributed, batch) < 1e-5 * step
    # The log still shows each micro-batch's own per-token mean, not its weighted share (the
    # short row's share is under 1/20): on the random model every such mean is about ln(512).
    logged = [logged_losses(tmp_path / 'accumulation2')[i] for i in (1, 2)]
    assert logged == pytest.approx([batch_loss] * 2, abs=0.01)


def test_control_the_mean_of_micro_batch_means_steps_elsewhere(tmp_path, two_rows, batch_of_two):
    _, config = two_rows
    batch, step, _ = batch_of_two
    mean_of_means = one_step(config, tmp_path / 'accumulation2_micro', batch_size=1, accumulation=2,
                             extra=['train_cfg.loss_normalization=micro_batch'])
    # The short row's few tokens weigh as much as the long row's hundreds.
    assert max_difference(mean_of_means, batch) > 0.1 * step


def test_a_model_that_averages_over_its_own_unit_is_weighed_by_it():
    # Preference models average a micro-batch's loss over its pairs, not its tokens: the step's
    # windows must count what the model's loss is the mean over (``count_loss_units``).
    from xft.dataset.collate_fns.preference_collate_fn import count_pairs
    from xft.engine.token_weighting import batch_trained_tokens, loss_units_counter
    from xft.model.dpo import DPO

    class Wrapped(torch.nn.Module):  # what a data-parallel wrapper looks like to the loop
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert loss_units_counter(SupervisedFinetune.__new__(SupervisedFinetune)) is batch_trained_tokens
    counter = loss_units_counter(Wrapped(DPO.__new__(DPO)))
    # three packed sequences of two pairs, then one pair: 2 and 1 units, whatever the tokens
    batches = [{'data': {'sequence_index': torch.tensor([[0, 0, 1, 1, 2, 3, 3]]),
                         'labels': torch.ones(1, 7, dtype=torch.long)}},
               {'data': {'sequence_index': torch.tensor([[0, 0, 0, 1]]),
                         'labels': torch.ones(1, 4, dtype=torch.long)}}]
    assert [counter(b) for b in batches] == [count_pairs(b) for b in batches] == [2, 1]

    class Batches:
        def __init__(self, items):
            self.items = iter(items)

        def __next__(self):
            return next(self.items)

    windows = StepWindows(Batches(batches), accumulation=2, max_iters=2, count=counter)
    first, second = windows.next(0), windows.next(1)
    assert (first.n_tokens, second.n_tokens, first.step_tokens) == (2, 1, 3)
