"""Training the tiny LoRA Llama by hand on several gloo processes, as TrainLoop does: one
token-weighted optimizer wrapper, micro-batches in accumulation windows, the step's trained
tokens summed over the ranks before its first backward.

``run_ranks`` starts the processes (fork: no re-import of the model stack) and collects what
each one saved; ``train_windows`` is the loop, shared by the ranks and the one-process
reference. CUDA graphs are forced onto the CPU with ``EagerReplay`` (the recorded bodies run
eagerly over the same static buffers), which exercises the gradient buffers the graphs own.
"""
import multiprocessing
import os
import traceback
from pathlib import Path

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper

from xft.dataset.collate_fns import default_collate_fn
from xft.engine.token_weighting import TokenWeightedOptimWrapper, batch_trained_tokens, sum_over_ranks
from xft.model.kernels.checkpoint import LayerCheckpointer
from xft.model import SupervisedFinetune
from xft.model.kernels.graphs import EagerReplay, GraphFamily, LayerGraphs
from xft.utils.constants import IGNORE_INDEX

TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']


def force_cpu_graphs(model, warmup: int = 1) -> GraphFamily:
    """Replay every checkpointed layer of ``model`` through graphs on the CPU."""
    family = GraphFamily(warmup=warmup, graph_type=EagerReplay, force=True)
    for module in model.modules():
        checkpointer = getattr(module, '_gradient_checkpointing_func', None)
        if isinstance(checkpointer, LayerCheckpointer):
            module._gradient_checkpointing_func = LayerGraphs(checkpointer, module, family)
    assert family.members, 'no checkpointed layer found'
    return family


def build_model(model_dir, graphs: bool):
    """The tiny Llama with LoRA (r=4, every projection) on the fast path; B starts nonzero
    so that every adapter weight gets a gradient from the first step."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = SupervisedFinetune(
        llm=dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(model_dir),
                 torch_dtype=torch.float32),
        lora=dict(type=LoraConfig, r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS,
                  task_type='CAUSAL_LM'))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'lora_B' in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.train()
    family = force_cpu_graphs(model) if graphs else None
    return model, family


def micro_batches(vocab: int, n: int, length: int = 16):
    """``n`` collated micro-batches of one row; each trains on another number of tokens
    (2 to 15), so the token weighting differs from a mean of means."""
    generator = torch.Generator().manual_seed(2)
    batches = []
    for i in range(n):
        ids = torch.randint(4, vocab, (length, ), generator=generator).tolist()
        masked = (3 * i) % (length - 2)
        labels = [IGNORE_INDEX] * masked + ids[masked:]
        batches.append(default_collate_fn([{'input_ids': ids, 'labels': labels}], pad_index=0))
    return batches


def train_windows(model, step_model, batches, accumulation: int, ranks: int, lr: float = 0.5):
    """SGD over ``batches`` in windows of ``accumulation``, weighted as TrainLoop weighs them.
    ``step_model`` is what ``train_step`` is called on (the model or its wrapper). Returns
    the logged losses and, per micro-batch, the number of reductions done after it."""
    params = [p for p in model.parameters() if p.requires_grad]
    wrapper = TokenWeightedOptimWrapper(OptimWrapper(torch.optim.SGD(params, lr=lr),
                                                     accumulative_counts=accumulation), ranks=ranks)
    reducer = getattr(step_model, 'reducer', None)
    losses, reductions = [], []
    for start in range(0, len(batches), accumulation):
        window = batches[start:start + accumulation]
        step_tokens = sum_over_ranks(sum(batch_trained_tokens(b) for b in window))
        for batch in window:
            wrapper.set_micro_batch(batch_trained_tokens(batch), step_tokens)
            log_vars = step_model.train_step(batch, optim_wrapper=wrapper)
            losses.append(float(log_vars['loss'].detach()))
            reductions.append(reducer.reductions if reducer is not None else 0)
    return losses, reductions


def trainable_state(model) -> dict:
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


def _rank_main(rank, world_size, init_file, out_dir, body, args):
    import torch.distributed as dist
    torch.set_num_threads(1)
    try:
        dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
        torch.save(body(rank, world_size, *args), Path(out_dir) / f'rank{rank}.pt')
        dist.destroy_process_group()
    except BaseException:  # the parent reads the traceback
        Path(out_dir, f'rank{rank}.error').write_text(traceback.format_exc())
        os._exit(1)
    os._exit(0)


def run_ranks(world_size: int, folder, body, *args, timeout: float = 240):
    """``body(rank, world_size, *args)`` on ``world_size`` forked gloo processes; the list of
    what each returned (saved with torch.save)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context('fork')
    processes = [context.Process(target=_rank_main, args=(rank, world_size, folder / 'group', folder, body, args))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    errors = sorted(folder.glob('rank*.error'))
    if errors or any(p.exitcode != 0 for p in processes):
        for process in processes:
            if process.is_alive():
                process.kill()
        details = '\n'.join(path.read_text() for path in errors)
        raise AssertionError(f'exit codes {[p.exitcode for p in processes]}\n{details}')
    return [torch.load(folder / f'rank{rank}.pt', weights_only=False) for rank in range(world_size)]



class GraphsOnCpuFinetune(SupervisedFinetune):
    """``SupervisedFinetune`` whose checkpointed layers replay graphs on the CPU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graph_family = force_cpu_graphs(self.llm)


class GraphReplaysHook(Hook):
    """Logs ``graph replays: N`` (rank 0's) when training ends."""

    def after_train(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        print_log(f'graph replays: {model.graph_family.replays}', logger='current')


def with_cpu_graphs(config_path, name: str = 'tiny_lora_graphs'):
    """A copy of a tiny config (tests/configs/tiny_sft.py filled in) whose model replays its
    layers as graphs on the CPU and logs the replays."""
    config_path = Path(config_path)
    text = config_path.read_text().replace('type=SupervisedFinetune,', 'type=GraphsOnCpuFinetune,')
    assert 'type=GraphsOnCpuFinetune,' in text
    text = ('from helpers.data_parallel import GraphReplaysHook, GraphsOnCpuFinetune\n' + text
            + '\ncustom_hooks = [dict(type=GraphReplaysHook)]\n')
    path = config_path.with_name(f'{name}.py')
    path.write_text(text)
    return path
