"""Sequence parallelism on GPUs: the longest single QLoRA row, and tokens/s against one GPU.

One process per GPU (torchrun), each building `SupervisedFinetune` as `xft train` builds it
(QLoRA NF4 double-quant, LoRA r=64 on the seven projections, dropout 0, the fast path with
offloaded layer checkpoints, fused AdamW under bf16 `AmpOptimWrapper`), on the Llama-2-7B-shaped
random model of `bench_one_gpu.make_model`. With `--sp N` the processes form sequence-parallel
groups of N (`xft.parallel.sequence`) and the model is wrapped in mmengine's DDP, as a run of
`xft train` with `sequence_parallel_size = N` is. Every step trains one random row of `seq_len`
tokens per group (batch 1).

    # one GPU, the reference
    python benchmarks/bench_sequence_parallel.py --model-dir M --out OUT --seqs 32768
    # two GPUs, one row split in two: 32k, then single steps at growing lengths
    torchrun --nproc_per_node=2 benchmarks/bench_sequence_parallel.py --model-dir M --out OUT \
        --sp 2 --seqs 32768 --longest 262144,393216,524288
    # parity first: a split row against the whole row on a small model (packed rows run the
    # varlen kernel inside the all-to-all on CUDA, which the CPU tests cannot reach)
    torchrun --nproc_per_node=2 benchmarks/bench_sequence_parallel.py --check --sp 2 --out OUT
    # the table
    python benchmarks/bench_sequence_parallel.py --summarize OUT
    # CPU smoke (two gloo processes, a tiny random Llama: steps, the ladder and the check)
    python benchmarks/bench_sequence_parallel.py --smoke --out /tmp/sp_smoke

`benchmarks/run_sequence_parallel.sh` runs all of it on a GPU machine. Each record is one JSON
line in `OUT/sequence_parallel_<date>.jsonl` with `world_size`, `sequence_parallel_size`,
`seq_len`, `tokens_per_s` (tokens of all rows of a step, all GPUs together, per second),
`tokens_per_s_per_gpu`, `step_s`, `peak_gib_per_gpu` (the largest `max_memory_allocated` of
any rank) and `status`. Before each single long step a `started` record is written: a rank that
runs out of memory writes `oom` and exits, torchrun then stops the others, so a `started`
without a result is a step that did not finish. A length predicted (from the previous one) to
take longer than `--longest-cap-s` is recorded as `skipped`.
"""
import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
sys.path.insert(0, str(REPO))

GIB = 2**30
# A step at twice the length costs about 2**1.8 times as much once attention dominates.
GROWTH_EXPONENT = 1.8


# ----------------------------------------------------------------------------------------
# one process of the group
# ----------------------------------------------------------------------------------------
class Group:
    """This process's place: rank, world, local device, and the sequence-parallel size."""

    def __init__(self, sp: int, backend: str, defer_groups: bool = False):
        import torch
        import torch.distributed as dist
        self.world = int(os.environ.get('WORLD_SIZE', '1'))
        self.rank = int(os.environ.get('RANK', '0'))
        self.local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        self.sp = sp
        self.cuda = backend == 'nccl'
        if self.cuda:
            torch.cuda.set_device(self.local_rank)
        self.device = torch.device('cuda', self.local_rank) if self.cuda else torch.device('cpu')
        if self.world > 1:
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=20))
        if sp > 1 and not defer_groups:
            from xft.parallel.sequence import init_sequence_parallel
            init_sequence_parallel(sp)
        elif self.world > 1 and sp == 1:
            raise SystemExit('several processes without --sp: this benchmark measures sequence parallelism')

    def max_over_ranks(self, value: float) -> float:
        import torch
        import torch.distributed as dist
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def barrier(self) -> None:
        import torch.distributed as dist
        if self.world > 1:
            dist.barrier()


def model_cfg(model_dir, group: Group, dtype):
    """The `model` section of an xft config: QLoRA over `model_dir` on this rank's device."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from bench_one_gpu import LORA, LORA_TARGETS
    llm = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(model_dir),
               torch_dtype=f'torch.{str(dtype).split(".")[-1]}', attn_implementation='sdpa',
               quantization_config=dict(type=BitsAndBytesConfig, load_in_4bit=True, load_in_8bit=False,
                                        llm_int8_threshold=6.0, llm_int8_has_fp16_weight=False,
                                        bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True,
                                        bnb_4bit_quant_type='nf4'))
    if group.cuda:
        llm['device_map'] = {'': group.local_rank}
    return dict(llm=llm, lora=dict(type=LoraConfig, **dict(LORA, lora_dropout=0.0), target_modules=LORA_TARGETS,
                                   bias='none', task_type='CAUSAL_LM'))


def set_offload_budget(model, host_gib: float) -> int:
    """Let the layer checkpointers park up to `host_gib` of inputs in pinned host memory
    (`SupervisedFinetune` allows 32 GiB); returns how many checkpointers were set."""
    from xft.model.kernels import LayerCheckpointer
    found = {id(f): f for f in (getattr(m, '_gradient_checkpointing_func', None) for m in model.modules())
             if isinstance(f, LayerCheckpointer)}
    for checkpointer in found.values():
        checkpointer.max_host_bytes = int(host_gib * GIB)
    return len(found)


def build_step(model_dir, group: Group, offload_host_gib: float):
    """The train step `xft train` would run: model, optimizer wrapper, DDP when several ranks."""
    import torch
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import AmpOptimWrapper, OptimWrapper, build_optim_wrapper
    from torch.optim import AdamW

    from xft.engine.device import adapt_optim_wrapper
    from xft.model import SupervisedFinetune
    dtype = torch.bfloat16 if group.cuda else torch.float32
    model = SupervisedFinetune(**model_cfg(model_dir, group, dtype))
    model.to(group.device)
    model.train()
    if offload_host_gib is not None:
        set_offload_budget(model, offload_host_gib)
    wrapper = (dict(type=AmpOptimWrapper, dtype='bfloat16') if group.cuda else dict(type=OptimWrapper))
    cfg = dict(optim_wrapper=dict(**wrapper, clip_grad=dict(max_norm=1.0),
                                  optimizer=dict(type=AdamW, lr=2e-4, betas=(0.9, 0.999), weight_decay=0)))
    adapt_optim_wrapper(cfg)
    optim_wrapper = build_optim_wrapper(model, cfg['optim_wrapper'])
    runner_model = model
    if group.world > 1:
        runner_model = MMDistributedDataParallel(module=model, device_ids=[group.local_rank] if group.cuda else None,
                                                 broadcast_buffers=False)

    def step(ids):
        losses = runner_model.train_step(dict(data=dict(input_ids=ids, labels=ids), data_samples=None),
                                         optim_wrapper)
        return losses['loss']

    step.model = model
    return step


def random_row(seq_len, vocab, device):
    """The same row on every rank (a group trains one row; the seed is the length)."""
    import torch
    generator = torch.Generator().manual_seed(seq_len)
    return torch.randint(4, vocab, (1, seq_len), generator=generator).to(device)


def synchronize(group: Group) -> None:
    import torch
    if group.cuda:
        torch.cuda.synchronize()
    group.barrier()


def peak_gib(group: Group) -> float:
    import torch
    if not group.cuda:
        return 0.0
    return round(group.max_over_ranks(torch.cuda.max_memory_allocated()) / GIB, 3)


def reset_peak(group: Group) -> None:
    import gc

    import torch
    gc.collect()
    if group.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def throughput(group: Group, seq_len: int, seconds_per_step: float) -> dict:
    rows = group.world // group.sp
    tokens_per_s = seq_len * rows / seconds_per_step
    return dict(tokens_per_s=round(tokens_per_s, 1), tokens_per_s_per_gpu=round(tokens_per_s / group.world, 1))


def measure(step, group: Group, seq_len, warmup, steps, vocab) -> dict:
    ids = random_row(seq_len, vocab, group.device)
    reset_peak(group)
    losses = [float(step(ids).detach()) for _ in range(warmup)]
    synchronize(group)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(ids)
    synchronize(group)
    elapsed = (time.perf_counter() - start) / steps
    losses.append(float(loss.detach()))
    return dict(status='ok', step_s=round(elapsed, 3), **throughput(group, seq_len, elapsed),
                peak_gib_per_gpu=peak_gib(group), losses=[round(x, 4) for x in losses])


def longest(step, group: Group, lengths, cap_s, vocab, last_len, last_step_s, emit) -> None:
    """One step at each length, in order, until one is predicted to exceed `cap_s` or fails."""
    import torch
    for seq_len in lengths:
        predicted = last_step_s * (seq_len / last_len) ** GROWTH_EXPONENT
        if predicted > cap_s:
            emit(dict(setting='longest', seq_len=seq_len, status='skipped', predicted_s=round(predicted, 1),
                      cap_s=cap_s))
            return
        emit(dict(setting='longest', seq_len=seq_len, status='started', predicted_s=round(predicted, 1)))
        reset_peak(group)
        ids = random_row(seq_len, vocab, group.device)
        start = time.perf_counter()
        try:
            loss = float(step(ids).detach())
            synchronize(group)
        except torch.OutOfMemoryError:
            allocated = torch.cuda.max_memory_allocated() / GIB if group.cuda else 0.0
            # Any rank may write this one; the others wait in a collective until torchrun stops them.
            emit(dict(setting='longest', seq_len=seq_len, status='oom', rank=group.rank,
                      peak_gib_this_gpu=round(allocated, 3)), any_rank=True)
            os._exit(3)
        elapsed = time.perf_counter() - start
        emit(dict(setting='longest', seq_len=seq_len, status='ok', step_s=round(elapsed, 2),
                  **throughput(group, seq_len, elapsed), peak_gib_per_gpu=peak_gib(group), loss=round(loss, 4)))
        last_len, last_step_s = seq_len, elapsed
        del ids


def worker(args) -> None:
    import torch
    group = Group(args.sp, 'nccl' if torch.cuda.is_available() and not args.cpu else 'gloo',
                  defer_groups=args.check)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / args.jsonl_name

    shape = {}

    def emit(record, any_rank=False):
        if group.rank != 0 and not any_rank:
            return
        record = dict(world_size=group.world, sequence_parallel_size=group.sp, **shape,
                      gpu=torch.cuda.get_device_name(group.local_rank) if group.cuda else 'cpu',
                      torch=torch.__version__, offload_host_gib=args.offload_host_gib, **record)
        with jsonl.open('a') as f:
            f.write(json.dumps(record) + '\n')
        print(json.dumps(record), flush=True)

    if args.check:
        passed = check(args, group, emit)
        group.barrier()
        if not passed:
            raise SystemExit('sequence-parallel check FAILED (see the check records)')
        return
    start = time.perf_counter()
    step = build_step(args.model_dir, group, args.offload_host_gib)
    vocab = step.model.llm.get_input_embeddings().weight.shape[0]
    config = step.model.llm.config
    shape['model'] = (f'hidden {config.hidden_size}, {config.num_hidden_layers} layers, '
                      f'{config.num_attention_heads} heads, vocab {vocab}')
    load_s = time.perf_counter() - start
    emit(dict(setting='load', load_s=round(load_s, 1), fast_path=step.model.fast_path.summary()))
    result = None
    seqs = [int(s) for s in args.seqs.split(',') if s]
    for seq_len in seqs:
        result = measure(step, group, seq_len, args.warmup, args.steps, vocab)
        emit(dict(setting=f'qlora_{seq_len}', seq_len=seq_len, warmup=args.warmup, steps=args.steps, **result))
    lengths = [int(s) for s in args.longest.split(',') if s]
    if lengths:
        last_len, last_s = (seqs[-1], result['step_s']) if result else (lengths[0], 0.0)
        longest(step, group, lengths, args.longest_cap_s, vocab, last_len, last_s, emit)
    group.barrier()


# ----------------------------------------------------------------------------------------
# the parity check: the split row against the whole row, on the GPUs' own kernels
# ----------------------------------------------------------------------------------------
CHECK_SHAPE = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=8, num_key_value_heads=4)


def check_batches(device):
    """A packed row of 4,099 tokens in 7 samples (odd: padded to split), two unpacked rows of
    3,001 and 1,500 tokens (padded batch), each with untrained prompt tokens."""
    import torch

    from xft.dataset.collate_fns import default_collate_fn
    from xft.utils.constants import IGNORE_INDEX
    generator = torch.Generator().manual_seed(11)

    def tokens(n):
        return torch.randint(4, CHECK_SHAPE['vocab_size'], (n,), generator=generator).tolist()

    def labels(ids, prompt):
        return [IGNORE_INDEX] * prompt + ids[prompt:]

    bounds = [0, 300, 1100, 1700, 2500, 3100, 3600, 4099]
    packed_ids = tokens(bounds[-1])
    packed_labels = sum((labels(packed_ids[s:e], 20) for s, e in zip(bounds, bounds[1:])), [])
    a, b = tokens(3001), tokens(1500)
    batches = {'packed': [{'input_ids': packed_ids, 'labels': packed_labels, 'cumulative_len': bounds}],
               'unpacked': [{'input_ids': a, 'labels': labels(a, 100)}, {'input_ids': b, 'labels': labels(b, 40)}]}
    out = {}
    for name, rows in batches.items():
        data = default_collate_fn(rows)['data']
        out[name] = {k: v.to(device) if hasattr(v, 'to') and not isinstance(v, list) else v for k, v in data.items()}
    return out


def check_model(model_dir, group: Group, dtype):
    """LoRA (r=8, weights drawn from a fixed seed) on the check model, on this rank's device."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from xft.model import SupervisedFinetune
    llm = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(model_dir),
               dtype=dtype, attn_implementation='sdpa')
    model = SupervisedFinetune(llm=llm, lora=dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.0,
                                                  task_type='CAUSAL_LM'), cuda_graphs=False)
    generator = torch.Generator().manual_seed(1)
    for _, param in sorted(model.named_parameters()):
        if param.requires_grad:
            param.data.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.to(group.device)
    model.train()
    return model


def loss_and_grads(model, data):
    model.zero_grad(set_to_none=True)
    loss = model(data, mode='loss')['loss']
    loss.backward()
    return float(loss.detach()), {k: p.grad.detach().float().clone() for k, p in model.named_parameters()
                                  if p.requires_grad}


def check(args, group: Group, emit) -> bool:
    """Loss and gradients of each check batch with the row split over the group, against the
    same model without sequence parallelism on the whole row (built on every rank first, before
    the groups exist). Gradients: the ranks' average, as DDP makes it; compared by the relative
    error of each tensor. Returns whether every batch is within tolerance."""
    import tempfile

    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from xft.parallel.sequence import get_sequence_parallel_group, init_sequence_parallel
    dtype = torch.bfloat16 if group.cuda else torch.float32
    # One machine: rank 0 saves (transformers saves from the main process only), the others wait.
    model_dir = Path(tempfile.gettempdir()) / 'sp_check_model'
    if group.rank == 0:
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**CHECK_SHAPE)).save_pretrained(model_dir)
    group.barrier()
    batches = check_batches(group.device)
    whole = check_model(model_dir, group, dtype)
    attention = whole.attention_implementation
    reference = {name: loss_and_grads(whole, data) for name, data in batches.items()}
    del whole
    init_sequence_parallel(group.sp)
    split = check_model(model_dir, group, dtype)
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    passed = True
    for name, data in batches.items():
        loss, grads = loss_and_grads(split, data)
        for grad in grads.values():
            dist.all_reduce(grad, group=get_sequence_parallel_group())
            grad /= group.sp
        ref_loss, ref_grads = reference[name]
        errors = {k: float((grads[k] - g).norm() / g.norm().clamp(min=1e-12)) for k, g in ref_grads.items()}
        worst = max(errors, key=errors.get)
        loss_error = abs(loss - ref_loss) / abs(ref_loss)
        ok = loss_error < tolerance and errors[worst] < tolerance
        passed &= ok
        emit(dict(setting='check', batch=name, attention=attention, dtype=str(dtype), status='ok' if ok else 'FAILED',
                  loss=round(loss, 5), reference_loss=round(ref_loss, 5), loss_rel_error=loss_error,
                  worst_grad_rel_error=errors[worst], worst_grad=worst, tolerance=tolerance,
                  seq_len=int(data['input_ids'].shape[1])))
    return passed


# ----------------------------------------------------------------------------------------
# the CPU smoke: the same code on two gloo processes and a tiny model
# ----------------------------------------------------------------------------------------
def _smoke_rank(rank, world, port, argv):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    import torch
    torch.set_num_threads(1)
    worker(parse_args(argv))


def smoke(args) -> int:
    """A 2-layer Llama of Llama-2's head layout in miniature (4 heads) on two gloo processes
    with sequence-parallel size 2, after one process without it: the kit's whole path."""
    import socket
    import tempfile

    import torch
    import torch.multiprocessing as mp
    from transformers import LlamaConfig, LlamaForCausalLM
    out = Path(args.out)
    model_dir = Path(tempfile.mkdtemp(prefix='sp_smoke_model_'))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4)).save_pretrained(model_dir)
    common = ['--model-dir', str(model_dir), '--out', str(out), '--cpu', '--seqs', '256', '--warmup', '1',
              '--steps', '2', '--jsonl-name', args.jsonl_name]
    worker(parse_args(common))
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    mp.spawn(_smoke_rank, args=(2, port, common + ['--sp', '2', '--longest', '512,1024']), nprocs=2, join=True)
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    mp.spawn(_smoke_rank, args=(2, port, ['--check', '--sp', '2', '--cpu', '--out', str(out), '--jsonl-name',
                                          args.jsonl_name]), nprocs=2, join=True)
    print(summarize(out / args.jsonl_name, out / args.jsonl_name.replace('.jsonl', '.md')))
    return 0


# ----------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------
def summarize(jsonl: Path, md_path: Path) -> str:
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    checks = [r for r in records if r.get('setting') == 'check']
    rows = [r for r in records if r.get('setting') not in ('load', 'check')]
    # A `started` long step is reported only when nothing else was recorded for it.
    finished = {(r['world_size'], r['sequence_parallel_size'], r['seq_len']) for r in rows
                if r.get('status') != 'started'}
    rows = [r for r in rows if r.get('status') != 'started'
            or (r['world_size'], r['sequence_parallel_size'], r['seq_len']) not in finished]
    one_gpu = {r['seq_len']: r['tokens_per_s'] for r in rows
               if r['world_size'] == 1 and r.get('status') == 'ok' and not r['setting'] == 'longest'}
    lines = ['| GPUs | sp | seq_len | setting | status | step s | tokens/s | tokens/s per GPU | vs 1 GPU | '
             'peak GiB per GPU |', '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for r in rows:
        ok = r.get('status') == 'ok'
        ratio = (f'{r["tokens_per_s"] / one_gpu[r["seq_len"]]:.2f}x'
                 if ok and r['world_size'] > 1 and r['seq_len'] in one_gpu else '')
        status = r.get('status', '')
        if status == 'oom':
            status = f'oom (rank {r.get("rank")})'
        elif status == 'started':
            status = 'did not finish'
        elif status == 'skipped':
            status = f'skipped (predicted {r.get("predicted_s")} s > {r.get("cap_s")} s)'
        lines.append(f'| {r["world_size"]} | {r["sequence_parallel_size"]} | {r["seq_len"]:,} | {r["setting"]} | '
                     f'{status} | {r.get("step_s", "")} | {r.get("tokens_per_s", "")} | '
                     f'{r.get("tokens_per_s_per_gpu", "")} | {ratio} | {r.get("peak_gib_per_gpu", "")} |')
    gpus = sorted({str(r.get('gpu')) for r in records})
    models = sorted({str(r.get('model')) for r in records if r.get('model')})
    text = (f'Sequence parallelism, QLoRA NF4, LoRA r=64 on all projections, batch 1, one row per step per group '
            f'(tokens/s: all GPUs together); model: {"; ".join(models)}; devices: {", ".join(gpus)}\n\n'
            + '\n'.join(lines) + '\n')
    if checks:
        text += ('\nParity of the split row with the whole row (loss and the worst gradient tensor, relative '
                 'errors; gradients averaged over the group):\n\n'
                 '| GPUs | sp | batch | tokens | attention | dtype | status | loss error | worst grad error |\n'
                 '| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n')
        text += ''.join(f'| {r["world_size"]} | {r["sequence_parallel_size"]} | {r["batch"]} | {r["seq_len"]} | '
                        f'{r["attention"]} | {r["dtype"]} | {r["status"]} | {r["loss_rel_error"]:.2e} | '
                        f'{r["worst_grad_rel_error"]:.2e} |\n' for r in checks)
    md_path.write_text(text)
    return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model-dir', help='the model (bench_one_gpu.make_model writes one)')
    parser.add_argument('--out', default='benchmarks/results', help='folder of the JSON lines and the table')
    parser.add_argument('--sp', type=int, default=1, help='sequence-parallel size (torchrun starts the processes)')
    parser.add_argument('--seqs', default='32768', help='lengths to time, comma-separated')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--longest', default='', help='single steps at these lengths, in order, after --seqs')
    parser.add_argument('--longest-cap-s', type=float, default=420.0,
                        help='skip a length predicted to take longer than this')
    parser.add_argument('--offload-host-gib', type=float, default=None,
                        help='pinned host memory for layer checkpoints per process (default: what xft train '
                             'allows, 32)')
    parser.add_argument('--jsonl-name', default=f'sequence_parallel_{datetime.date.today()}.jsonl')
    parser.add_argument('--cpu', action='store_true', help='gloo on the CPU even where CUDA is present')
    parser.add_argument('--smoke', action='store_true', help='the CPU smoke run (see the module docstring)')
    parser.add_argument('--check', action='store_true',
                        help='parity of the split row with the whole row on a small model (needs --sp N > 1)')
    parser.add_argument('--summarize', metavar='OUT', help='write the markdown table of OUT/<jsonl-name>')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summarize:
        jsonl = Path(args.summarize) / args.jsonl_name
        print(summarize(jsonl, jsonl.with_suffix('.md')))
        return 0
    if args.smoke:
        return smoke(args)
    if not args.model_dir and not args.check:
        raise SystemExit('--model-dir is required (or --smoke, --check)')
    worker(args)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
