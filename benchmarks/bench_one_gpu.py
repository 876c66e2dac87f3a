"""One-GPU training speed and memory: the plain transformers+peft+bitsandbytes path, unsloth, xft.

On a GPU machine (about 10 minutes for everything on an H200):

    python benchmarks/bench_one_gpu.py --out results_dir

It builds a Llama-2-7B-shaped model with random weights (hidden 4096, 32 layers, FFN 11008,
vocab 32000, 32 heads) on the GPU, saves it once, then trains it with each system in its own
process: LoRA r=64, alpha=16, dropout 0 (`--lora-dropout` for another) on all seven
projections, batch 1, random token ids,
`--warmup` untimed and `--steps` timed optimizer steps per setting (QLoRA NF4 double-quant
and bf16 LoRA, at each of `--seqs` tokens). Each process appends one JSON line per setting to
`<out>/gpu_<date>.jsonl`; the QLoRA processes then try single steps at growing lengths
(`--longest`) until one is predicted to exceed `--longest-cap-s` or runs out of memory.
Finally `<out>/gpu_<date>.md` tabulates tokens/s, peak GiB and the ratios to the baseline
and to unsloth.

Systems:
  baseline   transformers `from_pretrained` (NF4 double-quant `BitsAndBytesConfig` for QLoRA,
             bf16 for LoRA), peft `prepare_model_for_kbit_training` (QLoRA) + `get_peft_model`,
             gradient checkpointing, SDPA, torch AdamW.
  unsloth    `FastLanguageModel` with its own gradient checkpointing (skipped when not
             importable).
  xft        `SupervisedFinetune` built from a config dict as `tools/train.py` builds it (its
             defaults: the fast path, CUDA graphs, offloaded checkpoints), with mmengine's
             `AmpOptimWrapper` (bf16, grad clipping 1.0) adapted by `adapt_optim_wrapper`
             (fused AdamW) and `model.train_step`.
  xft_nographs, xft_plain   ablations: the same without CUDA graphs / without the fast path.

Peak memory: `peak_gib` is the larger of the warm-up's peak allocation and the timed steps'
peak allocation plus the memory reserved by CUDA-graph pools (allocations inside a graph
replay are not counted by `max_memory_allocated`, so the pool is added whole).
"""
import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
LLAMA2_7B_SHAPE = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
LORA = dict(r=64, lora_alpha=16, lora_dropout=0.0)
LONGEST_DEFAULT = '16384,32768,65536,131072,262144'
GIB = 2**30


# ----------------------------------------------------------------------------------------
# the model on disk
# ----------------------------------------------------------------------------------------
def make_model(model_dir: Path, max_positions: int) -> None:
    """Random Llama-2-7B-shaped bf16 model plus a 32,000-entry tokenizer (unsloth needs one)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (model_dir / 'config.json').exists():
        return
    config = LlamaConfig(**LLAMA2_7B_SHAPE, max_position_embeddings=max_positions,
                         rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    with torch.device('cuda'):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(model_dir, max_shard_size='5GB')
    vocab = {'<unk>': 0, '<s>': 1, '</s>': 2, '<pad>': 3}
    vocab.update({f't{i}': i for i in range(4, config.vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>', eos_token='</s>',
                            unk_token='<unk>', pad_token='<pad>').save_pretrained(model_dir)


# ----------------------------------------------------------------------------------------
# one system, one mode, in its own process
# ----------------------------------------------------------------------------------------
def bnb_config(torch):
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def build_baseline(model_dir, qlora, max_len):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM
    kwargs = dict(dtype=torch.bfloat16, attn_implementation='sdpa', device_map={'': 0})
    if qlora:
        kwargs['quantization_config'] = bnb_config(torch)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(**LORA, target_modules=LORA_TARGETS, bias='none',
                                             task_type='CAUSAL_LM'))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

    def step(ids):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def build_unsloth(model_dir, qlora, max_len):
    import unsloth  # noqa: F401  (must come before transformers)
    import torch
    from unsloth import FastLanguageModel
    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(model_dir), max_seq_length=max_len, dtype=torch.bfloat16,
        load_in_4bit=qlora, load_in_16bit=not qlora, local_files_only=True)
    model = FastLanguageModel.get_peft_model(
        model, **LORA, target_modules=LORA_TARGETS, bias='none',
        use_gradient_checkpointing='unsloth', random_state=0, max_seq_length=max_len)
    FastLanguageModel.for_training(model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

    def step(ids):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def xft_model_cfg(model_dir, qlora):
    """The `model` section of an xft config for this benchmark (bf16, `LORA`'s dropout)."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    llm = dict(type=AutoModelForCausalLM.from_pretrained,
               pretrained_model_name_or_path=str(model_dir), torch_dtype='torch.bfloat16',
               attn_implementation='sdpa', device_map={'': 0})
    if qlora:
        llm['quantization_config'] = dict(
            type=BitsAndBytesConfig, load_in_4bit=True, load_in_8bit=False,
            llm_int8_threshold=6.0, llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type='nf4')
    return dict(llm=llm, lora=dict(type=LoraConfig, **LORA, target_modules=LORA_TARGETS,
                                   bias='none', task_type='CAUSAL_LM'))


def build_xft(model_dir, qlora, max_len, **model_options):
    """SupervisedFinetune and its optimizer wrapper built the way `tools/train.py` builds them:
    the model from its config dict, the `optim_wrapper` section adapted to the machine by
    `xft.engine.device.adapt_optim_wrapper` (fused AdamW on CUDA), then `model.train_step`."""
    import torch
    from mmengine.optim import AmpOptimWrapper, build_optim_wrapper
    from torch.optim import AdamW

    import xft.model.sft as sft_module
    from xft.engine.device import adapt_optim_wrapper
    from xft.model import SupervisedFinetune
    # mmengine builds `model = dict(type=SupervisedFinetune, ...)` by calling the type.
    model = SupervisedFinetune(**xft_model_cfg(model_dir, qlora), **model_options)
    model.cuda()
    model.train()
    cfg = dict(optim_wrapper=dict(
        type=AmpOptimWrapper, dtype='bfloat16', clip_grad=dict(max_norm=1.0),
        optimizer=dict(type=AdamW, lr=2e-4, betas=(0.9, 0.999), weight_decay=0)))
    adapt_optim_wrapper(cfg)
    optim_wrapper = build_optim_wrapper(model, cfg['optim_wrapper'])
    print(f'xft: {sft_module.__file__}, options={model_options}, '
          f'optimizer={cfg["optim_wrapper"]["optimizer"]}', file=sys.stderr)
    if model.fast_path is not None:
        print(model.fast_path.summary(), file=sys.stderr)

    def step(ids):
        # The collate function's batch shape: {'data': {...}, 'data_samples': None}.
        losses = model.train_step(dict(data=dict(input_ids=ids, labels=ids), data_samples=None),
                                  optim_wrapper)
        return losses['loss']

    step.model = model
    return step


BUILDERS = {
    'baseline': build_baseline,
    'unsloth': build_unsloth,
    'xft': build_xft,  # what tools/train.py runs
    # ablations of the same model: without CUDA graphs, without the whole fast path
    'xft_nographs': lambda d, q, m: build_xft(d, q, m, cuda_graphs=False),
    'xft_plain': lambda d, q, m: build_xft(d, q, m, use_fast_path=False),
}


def _direct_dequant_state():
    from xft.model.kernels.lora_linear import dequantize_4bit
    return dequantize_4bit.verified


def graph_pool_bytes() -> int:
    """Bytes reserved by CUDA-graph memory pools (any pool but the default one)."""
    import torch
    total = 0
    for segment in torch.cuda.memory_snapshot():
        pool = tuple(segment.get('segment_pool_id', (0, 0)) or (0, 0))
        if pool != (0, 0):
            total += segment['total_size']
    return total


def graph_report(step) -> dict:
    """How many layer passes replayed as CUDA graphs so far, and the signatures that failed."""
    fast = getattr(getattr(step, 'model', None), 'fast_path', None)
    family = getattr(fast, 'graphs', None)
    if family is None:
        return {}
    return dict(graph_replays=family.replays, graph_failed=len(family.failed))


def release_graphs(step) -> None:
    import torch
    family = getattr(getattr(getattr(step, 'model', None), 'fast_path', None), 'graphs', None)
    if family is not None:
        family.release()
        gc.collect()
        torch.cuda.empty_cache()


def measure(step, seq_len, warmup, steps, vocab):
    import torch
    torch.manual_seed(seq_len)
    ids = torch.randint(4, vocab, (1, seq_len), device='cuda')
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    losses = []
    for _ in range(warmup):
        losses.append(float(step(ids)))
    torch.cuda.synchronize()
    warm_peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(ids)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    losses.append(float(loss))
    steady_peak = torch.cuda.max_memory_allocated()
    pool = graph_pool_bytes()
    peak = max(warm_peak, steady_peak + pool)
    return dict(tokens_per_s=round(seq_len * steps / elapsed, 1),
                step_s=round(elapsed / steps, 4),
                peak_gib=round(peak / GIB, 3),
                warmup_peak_gib=round(warm_peak / GIB, 3),
                steady_peak_gib=round(steady_peak / GIB, 3),
                graph_pool_gib=round(pool / GIB, 3),
                reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 3),
                first_loss=round(losses[0], 4), last_loss=round(losses[-1], 4),
                losses=[round(x, 4) for x in losses])


def profile(step, seq_len, path, title):
    """Kernel time table of two steps (torch.profiler), to see where a step's time goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile
    ids = torch.randint(4, LLAMA2_7B_SHAPE['vocab_size'], (1, seq_len), device='cuda')
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step(ids)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by='self_cuda_time_total', row_limit=40,
                                      max_name_column_width=70)
    with path.open('a') as f:  # one file for all profiles: few files come back from a GPU run
        f.write(f'===== {title} (two steps)\n{table}\n')
    print(table[:6000], flush=True)


def longest(step, lengths, cap_s, vocab, last_len, last_step_s, emit):
    """One step at each length until one is predicted to exceed cap_s or fails."""
    import torch
    for seq_len in lengths:
        # Linear parts scale with length, attention with its square: assume 2.5x per doubling.
        predicted = last_step_s * (seq_len / last_len)**1.32
        if predicted > cap_s:
            emit(dict(setting='longest', seq_len=seq_len, status='skipped',
                      predicted_s=round(predicted, 1), cap_s=cap_s))
            return
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(4, vocab, (1, seq_len), device='cuda')
        start = time.perf_counter()
        try:
            loss = float(step(ids))
            torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            emit(dict(setting='longest', seq_len=seq_len, status='oom',
                      peak_gib=round(torch.cuda.max_memory_allocated() / GIB, 3)))
            return
        elapsed = time.perf_counter() - start
        emit(dict(setting='longest', seq_len=seq_len, status='ok', step_s=round(elapsed, 2),
                  peak_gib=round(torch.cuda.max_memory_allocated() / GIB, 3),
                  loss=round(loss, 4)))
        last_len, last_step_s = seq_len, elapsed
        del ids


def worker(args):
    import torch
    qlora = args.mode == 'qlora'
    seqs = [int(s) for s in args.seqs.split(',') if s]
    lengths = [int(s) for s in args.longest.split(',') if s] if qlora else []
    if args.longest_systems and args.worker not in args.longest_systems.split(','):
        lengths = []
    max_len = max(seqs + lengths)
    out = Path(args.jsonl)

    LORA['lora_dropout'] = args.lora_dropout  # every builder reads LORA

    def emit(record):
        record = dict(system=args.worker, mode=args.mode, gpu=torch.cuda.get_device_name(),
                      torch=torch.__version__, lora_dropout=args.lora_dropout, **record)
        with out.open('a') as f:
            f.write(json.dumps(record) + '\n')
        print(json.dumps(record), flush=True)

    start = time.perf_counter()
    step = BUILDERS[args.worker](Path(args.model_dir), qlora, max_len)
    load_s = time.perf_counter() - start
    result = None
    for seq_len in seqs:
        result = measure(step, seq_len, args.warmup, args.steps, LLAMA2_7B_SHAPE['vocab_size'])
        result.update(graph_report(step))
        release_graphs(step)  # a training run has one row length: the next starts afresh
        emit(dict(setting=f'{args.mode}_{seq_len}', seq_len=seq_len, load_s=round(load_s, 1),
                  warmup=args.warmup, steps=args.steps, **result))
        if seq_len in [int(s) for s in args.profile_seqs.split(',') if s]:
            profile(step, seq_len, out.parent / f'profiles_{out.stem}.txt',
                    f'{args.worker} {args.mode} {seq_len}')
    if qlora and args.worker.startswith('xft'):
        emit(dict(setting='check', direct_nf4_dequantize_verified=_direct_dequant_state()))
    if lengths and result is not None:
        longest(step, lengths, args.longest_cap_s, LLAMA2_7B_SHAPE['vocab_size'], seqs[-1],
                result['step_s'], emit)


# ----------------------------------------------------------------------------------------
# the driver and the summary
# ----------------------------------------------------------------------------------------
def summarize(records, md_path: Path) -> str:
    """A markdown table per setting with ratios to the baseline and to unsloth."""
    timed = [r for r in records if r.get('setting') not in ('longest', 'check')
             and 'tokens_per_s' in r]
    for r in timed:  # rows measured with adapter dropout are told apart by their label
        dropout = float(r.get('lora_dropout', 0.0))
        r['label'] = r['system'] if dropout == 0 else f'{r["system"]}@dropout{dropout:g}'
    by_key = {(r['label'], r['setting']): r for r in timed}
    lines = [f'# One-GPU training benchmark ({records[0]["gpu"] if records else "?"}, '
             f'{datetime.date.today().isoformat()})', '',
             'Llama-2-7B shape, random weights, LoRA r=64 alpha=16 on all 7 projections '
             '(dropout 0 unless the system says @dropout), batch 1, random ids. tokens/s over the '
             'timed steps; peak = torch.cuda.max_memory_allocated (+ CUDA-graph pools for xft).', '',
             '| setting | system | tokens/s | peak GiB | vs baseline | vs unsloth | loss (first→last) |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for setting in sorted({r['setting'] for r in timed}, key=lambda s: (s.split('_')[0],
                                                                         int(s.split('_')[1]))):
        base = by_key.get(('baseline', setting))
        uns = by_key.get(('unsloth', setting))
        for r in sorted((r for r in timed if r['setting'] == setting), key=lambda r: r['label']):
            r['vs_baseline'] = round(r['tokens_per_s'] / base['tokens_per_s'], 3) if base else None
            r['vs_unsloth'] = round(r['tokens_per_s'] / uns['tokens_per_s'], 3) if uns else None
            vb = f'{r["vs_baseline"]:.2f}x' if base else '—'
            vu = f'{r["vs_unsloth"]:.2f}x' if uns else '—'
            lines.append(f'| {setting} | {r["label"]} | {r["tokens_per_s"]:,.0f} | '
                         f'{r["peak_gib"]:.2f} | {vb} | {vu} | {r["first_loss"]}→{r["last_loss"]} |')
    lines += ['', '## Longest single QLoRA step', '',
              '| system | tokens | status | step s | peak GiB |', '| --- | --- | --- | --- | --- |']
    for r in records:
        if r.get('setting') == 'longest':
            lines.append(f'| {r["system"]} | {r["seq_len"]:,} | {r["status"]} | '
                         f'{r.get("step_s", r.get("predicted_s", ""))} | {r.get("peak_gib", "")} |')
    text = '\n'.join(lines) + '\n'
    md_path.write_text(text)
    # The timed lines again, each with its ratios to the baseline and to unsloth.
    md_path.with_name(md_path.stem + '_ratios.jsonl').write_text(
        ''.join(json.dumps(r) + '\n' for r in timed))
    return text


def driver(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    day = datetime.date.today().isoformat()
    jsonl = out / f'gpu_{day}.jsonl'
    model_dir = Path(args.model_dir)
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', TOKENIZERS_PARALLELISM='false',
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
    max_positions = max(int(s) for s in (args.seqs + ',' + args.longest).split(',') if s)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, '--make-model', '--model-dir', str(model_dir),
                    '--max-positions', str(max_positions)], check=True, env=env)
    print(f'model ready in {time.perf_counter() - t0:.0f} s', flush=True)
    for system in args.systems.split(','):
        for mode in args.modes.split(','):
            cmd = [sys.executable, __file__, '--worker', system, '--mode', mode, '--model-dir',
                   str(model_dir), '--jsonl', str(jsonl), '--seqs', args.seqs, '--longest',
                   args.longest, '--longest-cap-s', str(args.longest_cap_s), '--longest-systems',
                   args.longest_systems, '--lora-dropout', str(args.lora_dropout), '--warmup',
                   str(args.warmup), '--steps', str(args.steps), '--profile-seqs',
                   args.profile_seqs if system in args.profile_systems.split(',') else '']
            t1 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, env=env, timeout=args.worker_timeout_s,
                                      capture_output=True, text=True)
                status = f'rc={proc.returncode}'
                log = proc.stdout + proc.stderr
            except subprocess.TimeoutExpired as exc:
                status = 'timeout'
                log = ''.join(part.decode(errors='replace') if isinstance(part, bytes) else
                              (part or '') for part in (exc.stdout, exc.stderr))
            with (out / 'logs.txt').open('a') as f:  # one file: few files come back
                f.write(f'===== {system} {mode}: {status}\n{log}\n')
            print(f'{system} {mode}: {status} in {time.perf_counter() - t1:.0f} s', flush=True)
            if status != 'rc=0':
                print(log[-3000:], flush=True)
    records = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    print(summarize(records, out / f'gpu_{day}.md'))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=str(REPO / 'benchmarks' / 'results'))
    p.add_argument('--model-dir', default='/tmp/llama2_7b_random')
    p.add_argument('--systems', default='baseline,unsloth,xft')
    p.add_argument('--modes', default='qlora,lora')
    p.add_argument('--seqs', default='2048,8192')
    p.add_argument('--longest', default=LONGEST_DEFAULT)
    p.add_argument('--longest-cap-s', type=float, default=60.0)
    p.add_argument('--longest-systems', default='', help='probe only these (default: all)')
    p.add_argument('--profile-seqs', default='', help='profile the step at these lengths')
    p.add_argument('--profile-systems', default='xft', help='...for these systems')
    p.add_argument('--lora-dropout', type=float, default=0.0,
                   help='LoRA dropout of every system (0: the settings of the earlier results)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--worker-timeout-s', type=float, default=420)
    p.add_argument('--max-positions', type=int, default=262144)
    p.add_argument('--make-model', action='store_true')
    p.add_argument('--worker', choices=sorted(BUILDERS))
    p.add_argument('--mode', choices=['qlora', 'lora'])
    p.add_argument('--jsonl')
    args = p.parse_args(argv)
    if args.make_model:
        make_model(Path(args.model_dir), args.max_positions)
    elif args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == '__main__':
    main()
