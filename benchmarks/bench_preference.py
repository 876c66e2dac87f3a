"""The cost of a preference step against an SFT step of the same length (issue 17's goal:
a DPO step of a chosen and a rejected answer at most 2.2x an SFT step of one row).

On a GPU machine (one H200 or H100; about 6 minutes):

    python benchmarks/bench_preference.py --out benchmarks/results

It builds the Llama-2-7B-shaped random model of ``bench_one_gpu.py`` (hidden 4096, 32 layers,
vocab 32000; saved once under ``--model-dir``), then, for QLoRA (NF4 double-quant) and LoRA
(bf16), each in its own process, times with xft's defaults (the fast path, CUDA graphs, LoRA
r=64 alpha=16 dropout 0 on the seven projections, ``AmpOptimWrapper`` bf16, ``train_step``):

- ``sft``: one row of ``--seq`` tokens (the SFT baseline);
- ``dpo_packed``: one pair, chosen and rejected ``--seq`` tokens each, packed into one row of
  2 x seq with a prompt of ``--prompt`` tokens in each (the zoo configs' layout,
  ``use_varlen_attn=True``): reference forward (adapters off) + policy forward and backward, as
  in the first epoch;
- ``dpo_packed_cached``: the same from the second epoch on, the reference's log-probabilities
  coming from ``xft.model.reference_cache`` (the warm-up steps fill it);
- ``dpo_rows``: the same pair as two rows of ``--seq`` (``use_varlen_attn=False``);
- ``orpo_packed``: the pair through ORPO (no reference model);

and writes one JSON line per measurement to ``<out>/preference_<date>.jsonl`` (step seconds,
tokens/s, peak GiB, and ``vs_sft``, the step time over the SFT step's), then a markdown table
``<out>/preference_<date>.md``. ``--attn sdpa,xft_varlen`` adds rows with torch's varlen kernel
for the packed layouts (block-diagonal mask otherwise).

CPU smoke test (a 2-layer, 64-wide Llama instead, a few seconds; checks that everything runs):

    python benchmarks/bench_preference.py --smoke --out /tmp/bench_pref
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

IGNORE_INDEX = -100
GIB = 2 ** 30
SMOKE_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=512)


def make_smoke_model(model_dir: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    if (model_dir / 'config.json').exists():
        return
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SMOKE_SHAPE, max_position_embeddings=1024)).save_pretrained(model_dir)


def model_cfg(model_dir, qlora, cuda, attn):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from bench_one_gpu import LORA, LORA_TARGETS
    dtype = torch.bfloat16 if cuda else torch.float32
    llm = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(model_dir),
               torch_dtype=dtype, attn_implementation=attn)
    if cuda:
        llm['device_map'] = {'': 0}
    if qlora:
        llm['quantization_config'] = dict(
            type=BitsAndBytesConfig, load_in_4bit=True, bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True, bnb_4bit_quant_type='nf4')
    return dict(llm=llm, lora=dict(type=LoraConfig, **LORA, target_modules=LORA_TARGETS,
                                   bias='none', task_type='CAUSAL_LM'))


def optim_wrapper_for(model, cuda):
    from mmengine.optim import AmpOptimWrapper, OptimWrapper, build_optim_wrapper
    from torch.optim import AdamW
    from xft.engine.device import adapt_optim_wrapper
    cfg = dict(optim_wrapper=dict(type=AmpOptimWrapper if cuda else OptimWrapper,
                                  clip_grad=dict(max_norm=1.0),
                                  optimizer=dict(type=AdamW, lr=1e-5, betas=(0.9, 0.999), weight_decay=0)))
    if cuda:
        cfg['optim_wrapper']['dtype'] = 'bfloat16'
        adapt_optim_wrapper(cfg)
    return build_optim_wrapper(model, cfg['optim_wrapper'])


def pair_rows(seq, prompt, vocab, device):
    """One pair of random ids: chosen and rejected share the prompt, each ``seq`` tokens."""
    import torch
    generator = torch.Generator().manual_seed(seq)
    prompt_ids = torch.randint(4, vocab, (prompt,), generator=generator).tolist()
    rows = []
    for _ in range(2):
        answer = torch.randint(4, vocab, (seq - prompt,), generator=generator).tolist()
        rows.append((prompt_ids + answer, [IGNORE_INDEX] * prompt + answer))
    return rows


def batches(kind, seq, prompt, vocab, device):
    """The collated batch of each measured step."""
    import torch
    from xft.dataset.collate_fns import preference_collate_fn
    (chosen, chosen_labels), (rejected, rejected_labels) = pair_rows(seq, prompt, vocab, device)
    if kind == 'sft':
        data = dict(input_ids=torch.tensor([chosen]), labels=torch.tensor([chosen]))
    else:
        row = {'input_ids': chosen + rejected, 'labels': chosen_labels + rejected_labels,
               'cumulative_len': [0, seq, 2 * seq]}
        data = preference_collate_fn([row], use_varlen_attn='packed' in kind, return_hf_format=True)
    return {'data': {k: (v.to(device) if isinstance(v, torch.Tensor) else
                         [c.to(device) for c in v] if isinstance(v, list) else v)
                     for k, v in data.items()}, 'data_samples': None}


def build(kind, model_dir, qlora, cuda, attn):
    from xft.model import SupervisedFinetune
    from xft.model.dpo import DPO
    from xft.model.orpo import ORPO
    cls = {'sft': SupervisedFinetune, 'dpo_packed': DPO, 'dpo_packed_cached': DPO, 'dpo_rows': DPO,
           'orpo_packed': ORPO}[kind]
    options = dict(cache_reference=kind == 'dpo_packed_cached') if cls is DPO else {}
    model = cls(**model_cfg(model_dir, qlora, cuda, attn), cuda_graphs=cuda, **options)
    if cuda:
        model.cuda()
    model.train()
    return model, optim_wrapper_for(model, cuda)


def measure(kind, args, qlora, attn, vocab):
    import torch
    cuda = not args.smoke
    device = 'cuda' if cuda else 'cpu'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, wrapper = build(kind, Path(args.model_dir), qlora, cuda, attn)
    batch = batches(kind, args.seq, args.prompt, vocab, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        model.train_step(batch, wrapper)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        losses = model.train_step(batch, wrapper)
    sync()
    step_s = (time.perf_counter() - start) / args.steps
    tokens = args.seq * (1 if kind == 'sft' else 2)
    record = dict(kind=kind, mode='qlora' if qlora else 'lora', attn=attn, seq=args.seq,
                  prompt=args.prompt, tokens=tokens, step_s=round(step_s, 4),
                  tokens_per_s=round(tokens / step_s, 1), loss=round(float(losses['loss']), 4),
                  peak_gib=round(torch.cuda.max_memory_allocated() / GIB, 3) if cuda else None)
    del model, wrapper
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return record


def worker(args):
    import torch
    qlora = args.mode == 'qlora'
    vocab = SMOKE_SHAPE['vocab_size'] if args.smoke else 32000
    device = 'cpu (smoke)' if args.smoke else torch.cuda.get_device_name()
    sft = None
    for attn in args.attn.split(','):
        for kind in ('sft', 'dpo_packed', 'dpo_packed_cached', 'dpo_rows', 'orpo_packed'):
            if attn != 'sdpa' and 'packed' not in kind:
                continue  # unpacked rows use plain causal attention whatever the setting
            if attn == 'xft_varlen':
                from xft.model.packed_attention import register_varlen_attention
                register_varlen_attention()
            record = measure(kind, args, qlora, attn, vocab)
            if kind == 'sft' and attn == 'sdpa':
                sft = record['step_s']
            record.update(device=device, torch=torch.__version__,
                          vs_sft=round(record['step_s'] / sft, 3) if sft else None)
            with Path(args.jsonl).open('a') as f:
                f.write(json.dumps(record) + '\n')
            print(json.dumps(record), flush=True)


def summarize(jsonl: Path, md: Path) -> str:
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    smoke = bool(records) and records[0]['device'].startswith('cpu')
    shape = 'a 2-layer, 64-wide Llama (CPU smoke test: timings mean nothing)' if smoke else \
        'Llama-2-7B shape'
    lines = [f'# Preference step vs SFT step ({records[0]["device"] if records else "?"}, '
             f'{datetime.date.today().isoformat()})', '',
             f'{shape}, random weights, LoRA r=64 alpha=16 dropout 0, xft defaults. '
             'sft: one row of seq tokens; dpo/orpo: chosen and rejected of seq tokens each '
             '(shared prompt of `prompt` tokens). vs_sft = step time / the SFT step time '
             '(goal for DPO: at most 2.2).', '',
             '| mode | attention | step | seq | prompt | step s | tokens/s | peak GiB | vs_sft |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for r in records:
        lines.append(f'| {r["mode"]} | {r["attn"]} | {r["kind"]} | {r["seq"]} | {r["prompt"]} | '
                     f'{r["step_s"]} | {r["tokens_per_s"]:,.0f} | {r["peak_gib"]} | {r["vs_sft"]} |')
    text = '\n'.join(lines) + '\n'
    md.write_text(text)
    return text


def driver(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    day = datetime.date.today().isoformat()
    jsonl = out / f'preference_{"smoke_" if args.smoke else ""}{day}.jsonl'
    model_dir = Path(args.model_dir)
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
    if args.smoke:
        make_smoke_model(model_dir)
    else:
        subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'bench_one_gpu.py'), '--make-model',
                        '--model-dir', str(model_dir), '--max-positions', str(2 * args.seq)],
                       check=True, env=env)
    for mode in args.modes.split(','):
        cmd = [sys.executable, __file__, '--worker', '--mode', mode, '--model-dir', str(model_dir),
               '--jsonl', str(jsonl), '--seq', str(args.seq), '--prompt', str(args.prompt),
               '--warmup', str(args.warmup), '--steps', str(args.steps), '--attn', args.attn]
        if args.smoke:
            cmd.append('--smoke')
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            print(f'{mode}: rc={proc.returncode}\n{(proc.stdout + proc.stderr)[-4000:]}', flush=True)
    print(summarize(jsonl, jsonl.with_suffix('.md')))
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=str(REPO / 'benchmarks' / 'results'))
    parser.add_argument('--model-dir', default=None,
                        help='where the random model is saved (default: /tmp/llama2_7b_random, '
                             'or /tmp/xft_bench_pref_tiny with --smoke)')
    parser.add_argument('--modes', default='qlora,lora')
    parser.add_argument('--seq', type=int, default=None, help='tokens per answer sequence (2048)')
    parser.add_argument('--prompt', type=int, default=None,
                        help='prompt tokens in each sequence, not trained (512)')
    parser.add_argument('--attn', default='sdpa', help="attention implementations, e.g. 'sdpa,xft_varlen'")
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--smoke', action='store_true', help='CPU, a tiny model: check it runs')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--mode', help=argparse.SUPPRESS)
    parser.add_argument('--jsonl', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model_dir = args.model_dir or ('/tmp/xft_bench_pref_tiny' if args.smoke else '/tmp/llama2_7b_random')
    args.seq = args.seq or (64 if args.smoke else 2048)
    args.prompt = args.prompt if args.prompt is not None else (16 if args.smoke else 512)
    if args.smoke:
        args.modes = 'lora' if args.modes == 'qlora,lora' else args.modes
        args.warmup, args.steps = min(args.warmup, 1), min(args.steps, 2)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == '__main__':
    sys.exit(main())
