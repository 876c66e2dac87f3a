"""StepDataParallel (xft.engine.data_parallel) on two gloo processes against one process with
twice the accumulation: the same micro-batches make the same optimizer steps, with the CUDA
graphs' gradient buffers (forced onto the CPU) and without them.

Rank r trains micro-batches r, r+2, ... of one sequence in windows of 2; the reference trains
all of them in windows of 4, so its window k holds exactly the ranks' windows k. Each
micro-batch trains another number of tokens and the loss is token-weighted as in TrainLoop;
SGD (not Adam, which hides a gradient's scale) makes any error of scale show in the weights.
"""
import pytest
import torch
import torch.distributed as dist
from helpers.data_parallel import build_model, micro_batches, run_ranks, train_windows, trainable_state

from xft.engine.data_parallel import GradientReducer, StepDataParallel

WINDOWS = 3
PER_RANK_ACCUMULATION = 2


def data_parallel_rank(rank, world_size, model_dir, graphs, bucket_mb):
    model, family = build_model(model_dir, graphs)
    if rank == 1:  # another start: the wrapper's broadcast must make rank 0's the start
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(0.1)
    wrapped = StepDataParallel(model, bucket_mb=bucket_mb)
    batches = micro_batches(model.llm.config.vocab_size, WINDOWS * PER_RANK_ACCUMULATION * world_size)
    losses, reductions = train_windows(model, wrapped, batches[rank::world_size], PER_RANK_ACCUMULATION,
                                       ranks=world_size)
    return dict(losses=losses, reductions=reductions, collectives=wrapped.reducer.collectives,
                state=trainable_state(model), replays=family.replays if family else None,
                graphs_allowed=family.grads_reduced_after_backward if family else None)


@pytest.fixture(scope='module')
def reference(tiny_llama_dir):
    """One process, no process group, windows of 4 (the graphs are numerically the eager path:
    tests/test_kernels_graphs.py)."""
    model, _ = build_model(tiny_llama_dir, graphs=False)
    batches = micro_batches(model.llm.config.vocab_size, WINDOWS * PER_RANK_ACCUMULATION * 2)
    losses, _ = train_windows(model, model, batches, 2 * PER_RANK_ACCUMULATION, ranks=1)
    start, _ = build_model(tiny_llama_dir, graphs=False)
    return losses, trainable_state(model), trainable_state(start)


@pytest.mark.parametrize('graphs, bucket_mb', [(True, 32), (True, 0.003), (False, 32)],
                         ids=['graphs', 'graphs-small-buckets', 'eager'])
def test_two_ranks_train_like_one_process_with_twice_the_accumulation(tmp_path, tiny_llama_dir, reference,
                                                                      graphs, bucket_mb):
    ref_losses, ref_state, start_state = reference
    ranks = run_ranks(2, tmp_path, data_parallel_rank, tiny_llama_dir, graphs, bucket_mb)
    for rank, result in enumerate(ranks):
        # Rank r's micro-batch i is the reference's micro-batch 2i + r, on the same weights.
        torch.testing.assert_close(torch.tensor(result['losses']), torch.tensor(ref_losses[rank::2]),
                                   atol=1e-6, rtol=1e-6)
        assert sorted(result['state']) == sorted(ref_state) and len(ref_state) == 28
        for name, value in ref_state.items():
            torch.testing.assert_close(result['state'][name], value, atol=1e-6, rtol=1e-5, msg=name)
    # The control: training moved every weight a hundred times the tolerance or more.
    assert min((ref_state[n] - start_state[n]).abs().max().item() for n in ref_state) > 1e-4
    if graphs:
        # 2 layers x (forward + backward) per micro-batch, the first micro-batch warming up:
        # the graphs ran under the process group and their buffers were reduced.
        assert [r['replays'] for r in ranks] == [2 * 2 * (WINDOWS * PER_RANK_ACCUMULATION - 1)] * 2
        assert all(r['graphs_allowed'] for r in ranks)


def test_one_reduction_per_window_at_its_last_micro_batch(tmp_path, tiny_llama_dir):
    [rank0, rank1] = run_ranks(2, tmp_path, data_parallel_rank, tiny_llama_dir, True, 32)
    # Reductions counted after each micro-batch: none inside a window, one at each window's end.
    assert rank0['reductions'] == rank1['reductions'] == [0, 1, 1, 2, 2, 3]
    # Per reduction: the presence mask, then every gradient (fp32, 28 KiB) in one bucket.
    assert rank0['collectives'] == rank1['collectives'] == 2 * WINDOWS


def parameters_without_grads_rank(rank, world_size):
    """Parameter 0 has a gradient on rank 0 only, parameter 1 on no rank, parameter 2 on both."""
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
    params[0].grad = torch.full((3, ), 4.0) if rank == 0 else None
    params[2].grad = torch.full((3, ), float(rank + 1))
    reducer = GradientReducer(params, bucket_mb=32)
    reducer.reduce()
    return [None if p.grad is None else p.grad.tolist() for p in params]


def test_a_gradient_missing_on_some_ranks_counts_as_zero_and_on_all_stays_none(tmp_path):
    results = run_ranks(2, tmp_path, parameters_without_grads_rank)
    assert results == [[[2.0] * 3, None, [1.5] * 3]] * 2


def test_the_wrapper_needs_a_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match='needs a process group'):
        StepDataParallel(torch.nn.Linear(2, 2))
