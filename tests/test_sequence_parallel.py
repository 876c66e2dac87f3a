"""Sequence parallelism (XTuner's ``sequence_parallel_size``): a row split over two gloo processes
trains exactly like the whole row in one process.

The model-level checks run one group of two processes (``helpers.sequence_parallel``) over every
case at once: LoRA, QLoRA and full fine-tuning, the fast path and the plain one, Llama, Mistral,
Qwen2 and Qwen3, on unpacked padded rows, packed rows and a row whose trained tokens all sit on
one rank. Each rank's loss must equal the one-process loss of the whole batch and the ranks'
averaged gradients (what DDP makes of them) its gradients, in float32 to 1e-5. The end-to-end
checks run ``xft train`` on two processes with ``sequence_parallel_size=2``, under DDP and under
DeepSpeed ZeRO-2, against one process.
"""
import contextlib
import io
import sys

import pytest
import torch
from helpers.paths import ALPACA_SUBSET
from helpers.sequence_parallel import batches, case_results, run_group, save_tiny_model
from helpers.training import free_port, logged_losses, run_launched, train_env, train_in_process, write_tiny_config

from xft.engine.checkpoint import load_checkpoint_file
from xft.model.loss import shift_labels
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError

TOLERANCE = dict(atol=1e-5, rtol=1e-5)
FAMILIES = ('mistral', 'qwen2', 'qwen3')


@pytest.fixture(scope='module')
def family_dirs(tmp_path_factory, tiny_tokenizer):
    return {family: str(save_tiny_model(tmp_path_factory.mktemp(family), tiny_tokenizer, family))
            for family in FAMILIES}


@pytest.fixture(scope='module')
def cases(tiny_llama_dir, family_dirs):
    llama = str(tiny_llama_dir)
    return ([(llama, 'lora', True), (llama, 'lora', False), (llama, 'full', True), (llama, 'full', False),
             (llama, 'qlora', True)] + [(family_dirs[family], 'lora', True) for family in FAMILIES])


@pytest.fixture(scope='module')
def group(tmp_path_factory, cases):
    """Each rank's results from one group of two gloo processes (sequence-parallel size 2)."""
    return run_group(2, tmp_path_factory.mktemp('sequence_parallel_group'), cases)


def test_the_batches_cover_odd_lengths_packing_and_uneven_token_splits():
    data = batches()
    assert data['unpacked']['input_ids'].shape == (2, 11) and data['unpacked']['attention_mask'][1].sum() == 6
    assert data['packed']['cumulative_len'][0].tolist() == [0, 4, 9, 13]
    assert [c.tolist() for c in data['packed_2']['cumulative_len']] == [[0, 5, 9], [0, 3, 7, 9]]
    # The skewed row: the first of two pieces scores nothing, the second everything.
    targets = shift_labels(data['skewed']['labels'])[0]
    first, second = targets.chunk(2)
    assert bool((first == IGNORE_INDEX).all()) and int((second != IGNORE_INDEX).sum()) == 3


def test_two_ranks_give_the_loss_and_gradients_of_the_whole_row(group, cases):
    assert len(cases) == 8
    for case in cases:
        reference = case_results(*case)
        assert sorted(reference) == ['packed', 'packed_2', 'skewed', 'unpacked']
        for rank, results in enumerate(group):
            got = results['cases'][case]
            for name, (loss, grads) in reference.items():
                where = f'{case} {name} rank {rank}'
                torch.testing.assert_close(got[name][0], loss, **TOLERANCE, msg=where)
                assert sorted(got[name][1]) == sorted(grads) and grads, where
                for key, grad in grads.items():
                    torch.testing.assert_close(got[name][1][key], grad, **TOLERANCE, msg=f'{where} {key}')
                # Gradients that are all zero would make the comparison prove nothing.
                assert max(float(g.abs().max()) for g in grads.values()) > 1e-3, where


def test_the_ranks_of_a_group_draw_the_same_rows(group):
    from mmengine.dataset import DefaultSampler
    assert [results['ranks'] for results in group] == [(0, 0, 1), (1, 0, 1)]
    one_process = list(DefaultSampler(list(range(10)), shuffle=True, seed=3))
    assert group[0]['sampler'] == group[1]['sampler'] == one_process


def test_two_groups_of_two_draw_disjoint_rows(monkeypatch):
    """Four ranks, size 2: ranks 0 and 1 draw one set of rows, ranks 2 and 3 the other half."""
    import mmengine.dataset.sampler as mmengine_sampler

    import xft.parallel.sequence.sampler as sampler_module
    drawn = []
    for rank in range(4):
        monkeypatch.setattr(mmengine_sampler, 'get_dist_info', lambda rank=rank: (rank, 4))
        monkeypatch.setattr(sampler_module, 'get_data_parallel_rank', lambda rank=rank: rank // 2)
        monkeypatch.setattr(sampler_module, 'get_data_parallel_world_size', lambda: 2)
        sampler = sampler_module.SequenceParallelSampler(list(range(10)), shuffle=True, seed=3)
        drawn.append(list(sampler))
        assert len(sampler) == 5
    assert drawn[0] == drawn[1] and drawn[2] == drawn[3]
    assert sorted(drawn[0] + drawn[2]) == list(range(10))


def test_ranks_of_a_group_handed_different_rows_stop_in_one_line(group):
    assert [results['different_rows'] for results in group] == [
        'sequence parallelism: the 2 ranks of a group got different rows; train_dataloader.sampler must give '
        'them the same rows (SequenceParallelSampler)'] * 2


def test_rows_padded_on_the_left_are_refused():
    from xft.model.sequence_parallel import _check_right_padded
    from xft.utils.errors import DataError
    _check_right_padded(torch.tensor([[1, 1, 1], [1, 1, 0]]))
    with pytest.raises(DataError, match='rows must be padded on the right'):
        _check_right_padded(torch.tensor([[1, 1, 1], [0, 1, 1]]))


def test_all_to_all_swaps_tokens_for_heads_and_back_in_backward(group):
    for results in group:
        assert results['all_to_all'] == (0.0, 0.0)


# ------------------------------------------------------------------------------ refusals


def _tiny(model_type='llama', **settings):
    from transformers import AutoConfig, AutoModelForCausalLM
    base = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2)
    base.update(settings)
    attention = base.pop('attn_implementation', 'sdpa')
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **base), attn_implementation=attention)


@pytest.mark.parametrize('size, model, message', [
    (4, dict(), 'sequence_parallel_size=4: the model has 4 attention heads and 2 key/value heads; both must divide '
                'by the sequence-parallel size (each rank attends with 1/4 of them); choose a size that divides 2'),
    (2, dict(num_attention_heads=3, num_key_value_heads=3, hidden_size=18),
     'the model has 3 attention heads and 3 key/value heads; both must divide'),
    (2, dict(model_type='gpt2', n_head=4, n_embd=16, n_layer=1),
     "sequence_parallel_size=2: model type 'gpt2' is not supported; sequence parallelism splits Llama-style "
     'attention (llama, mistral, qwen2, qwen3)'),
    (2, dict(model_type='mistral', sliding_window=4096),
     'sequence_parallel_size=2: the model attends through a sliding window of 4096 tokens'),
    (2, dict(attn_implementation='eager'),
     "sequence_parallel_size=2: attn_implementation='eager' is not supported under sequence parallelism; use 'sdpa'"),
])
def test_models_the_split_cannot_serve_are_refused_in_one_line(size, model, message):
    from xft.model.sequence_parallel import check_sequence_parallel_model
    model = dict(model)
    llm = _tiny(model.pop('model_type', 'llama'), **model)
    with pytest.raises(ConfigError) as error:
        check_sequence_parallel_model(llm, size)
    assert message in str(error.value) and '\n' not in str(error.value)


def test_sizes_and_samplers_that_cannot_work_are_refused_in_one_line():
    from mmengine.config import Config
    from mmengine.dataset import DefaultSampler

    from xft.dataset.samplers import LengthGroupedSampler
    from xft.parallel.sequence import check_sequence_parallel_size, setup_sequence_parallel
    from xft.parallel.sequence.setup import _use_sequence_parallel_sampler

    def refusal(call):
        with pytest.raises(ConfigError) as error:
            call()
        return str(error.value)

    assert setup_sequence_parallel(Config(dict(launcher='none'))) == 1
    assert refusal(lambda: setup_sequence_parallel(Config(dict(sequence_parallel_size=2, launcher='none')))) == (
        'sequence_parallel_size=2 splits each row over 2 processes; start them with NPROC_PER_NODE=2 xft train '
        'CONFIG (or a multiple of 2)')
    assert refusal(lambda: setup_sequence_parallel(Config(dict(sequence_parallel_size='2')))) == (
        "sequence_parallel_size: expected a positive integer, got '2'")
    assert 'this process has no sequence-parallel groups of 2 ranks' in refusal(lambda: check_sequence_parallel_size(2))
    grouped = Config(dict(train_dataloader=dict(sampler=dict(type=LengthGroupedSampler, length_property='length'))))
    assert refusal(lambda: _use_sequence_parallel_sampler(grouped, 2)) == (
        'sequence_parallel_size=2: train_dataloader.sampler LengthGroupedSampler gives each rank its own rows; the 2 '
        'ranks of a group need the same rows: use SequenceParallelSampler')
    plain = Config(dict(train_dataloader=dict(sampler=dict(type=DefaultSampler, shuffle=True, seed=5))))
    _use_sequence_parallel_sampler(plain, 2)
    assert plain.train_dataloader.sampler == dict(type='xft.parallel.sequence.sampler.SequenceParallelSampler',
                                                  shuffle=True, seed=5)


# ------------------------------------------------------------------------------ xft train

# Rows of varying, often odd, lengths, two per micro-batch (padded), two micro-batches per step.
OPTIONS = ('train_cfg.max_iters=6', 'optim_wrapper.accumulative_counts=2', 'train_dataloader.sampler.seed=0',
           'model.lora.lora_dropout=0.0', 'log_processor.window_size=1', 'default_hooks.checkpoint.interval=100',
           'train_dataloader.dataset.max_dataset_length=24')


def train_two_processes(config, work_dir, *extra, processes=2, expect_rc=0):
    env = train_env(NPROC_PER_NODE=str(processes), PORT=str(free_port()))
    result = run_launched([sys.executable, '-m', 'xft.cli', 'train', config, '--work-dir', work_dir, *extra], env=env)
    if expect_rc is not None:
        assert result.returncode == expect_rc, result.stderr[-4000:]
    return result


def assert_same_training(work_dir, reference_dir, tolerance):
    losses, reference = logged_losses(work_dir), logged_losses(reference_dir)
    assert sorted(losses) == sorted(reference) == list(range(1, 7))
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], abs=tolerance), step
    assert reference[6] != reference[1], 'nothing trained: the comparison would prove nothing'
    one = load_checkpoint_file(reference_dir / 'iter_6.pth')['state_dict']
    two = load_checkpoint_file(work_dir / 'iter_6.pth')['state_dict']
    assert sorted(one) == sorted(two) and len(one) == 28
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=2e-6, rtol=1e-4, msg=name)


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory, tiny_llama_dir):
    return write_tiny_config(tmp_path_factory.mktemp('sp_train'), tiny_llama_dir, ALPACA_SUBSET)


@pytest.fixture(scope='module')
def one_process_run(tmp_path_factory, tiny_config):
    """The reference of the launched runs below: the same config trained in this process."""
    single = tmp_path_factory.mktemp('sp_reference') / 'single'
    train_in_process(tiny_config, '--work-dir', single, '--cfg-options', *OPTIONS)
    return single


def test_xft_train_with_sequence_parallel_size_2_trains_like_one_process(tmp_path, tiny_config, one_process_run):
    single = one_process_run
    split = tmp_path / 'sp2'
    result = train_two_processes(tiny_config, split, '--cfg-options', 'sequence_parallel_size=2', *OPTIONS)
    log = result.stdout + result.stderr
    assert log.count('train_dataloader.sampler DefaultSampler -> SequenceParallelSampler') == 1
    assert 'sequence parallel over 2 ranks' in log
    assert_same_training(split, single, tolerance=1e-5)


def test_four_processes_in_two_groups_of_two_train_like_one_process_with_twice_the_accumulation(tmp_path,
                                                                                                tiny_config):
    """World 4, sequence-parallel size 2: two data-parallel groups, each step one row per group.
    One process with two micro-batches of one row per step trains the same rows (the sampler's
    shared order), so rank 0 logs the one-process run's odd iterations, and the weights agree."""
    options = [option for option in OPTIONS if not option.startswith(('train_cfg', 'optim_wrapper'))]
    # One row per micro-batch; the warm-up counts iterations, which differ between the two runs.
    options += ['train_dataloader.batch_size=1', 'param_scheduler.0.start_factor=1.0']
    single = tmp_path / 'single'
    train_in_process(tiny_config, '--work-dir', single, '--cfg-options', *options, 'train_cfg.max_iters=12',
                     'optim_wrapper.accumulative_counts=2')
    split = tmp_path / 'world4_sp2'
    result = train_two_processes(tiny_config, split, '--cfg-options', 'sequence_parallel_size=2', *options,
                                 'train_cfg.max_iters=6', 'optim_wrapper.accumulative_counts=1', processes=4)
    assert 'sequence parallel: 4 processes in 2 group(s) of 2' in result.stdout + result.stderr
    losses, reference = logged_losses(split), logged_losses(single)
    assert sorted(losses) == list(range(1, 7))
    for step in losses:
        assert losses[step] == pytest.approx(reference[2 * step - 1], abs=1e-5), step
    one = load_checkpoint_file(single / 'iter_12.pth')['state_dict']
    four = load_checkpoint_file(split / 'iter_6.pth')['state_dict']
    assert sorted(one) == sorted(four)
    # Four processes sum in another order than one; AdamW divides by the root of the squared
    # gradients, so a coordinate whose gradient is near zero moves by up to ~6e-6 differently.
    for name in one:
        torch.testing.assert_close(four[name], one[name], atol=1e-5, rtol=1e-4, msg=name)


def test_sequence_parallel_under_deepspeed_zero2_trains_like_one_process(tmp_path, tiny_config, one_process_run):
    # The plain Runner run is the reference: LoRA starts from the seed alone
    # (xft.model.lora.attach_lora), though FlexibleRunner builds the model after other draws.
    split = tmp_path / 'zero2_sp2'
    train_two_processes(tiny_config, split, '--deepspeed', 'deepspeed_zero2', '--cfg-options',
                        'sequence_parallel_size=2', *OPTIONS)
    losses, reference = logged_losses(split), logged_losses(one_process_run)
    assert sorted(losses) == sorted(reference) == list(range(1, 7))
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], abs=2e-5), step


def test_xft_train_on_one_process_refuses_sequence_parallel_size_2(tmp_path, tiny_config):
    from xft import cli
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = cli.main(['train', str(tiny_config), '--work-dir', str(tmp_path / 'run'),
                         '--cfg-options', 'sequence_parallel_size=2'])
    assert code == 2
    assert output.getvalue().strip().splitlines()[-1] == (
        'xft train: sequence_parallel_size=2 splits each row over 2 processes; start them with NPROC_PER_NODE=2 '
        'xft train CONFIG (or a multiple of 2)')
