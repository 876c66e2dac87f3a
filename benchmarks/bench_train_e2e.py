"""Training speed through the user's path: `python tools/train.py` on zoo configs as shipped.

    python benchmarks/bench_train_e2e.py --out DIR [--step-jsonl DIR/gpu_<date>.jsonl]
    python benchmarks/bench_train_e2e.py --smoke --out /tmp/e2e_smoke      # CPU, tiny model

Each row copies a zoo config (QLoRA: llama2_7b_qlora_alpaca_e3; LoRA: the same model shape,
llama2_7b_chat_lora_alpaca_e3), edits only PART 1 (the model path -> the random
Llama-2-7B-shaped model that `bench_one_gpu.py --make-model` writes, the data path -> the
alpaca subset, `max_length`, and `lora_dropout`: 0.1 as shipped, 0 as the variant; where
PART 1 has no `lora_dropout` line yet it is set with `--cfg-options model.lora.lora_dropout`)
and trains it with `tools/train.py` for `warmup + iters` iterations: packed rows, the real
dataloader, the config's hooks, AmpOptimWrapper and gradient accumulation (16). The run's
own scalars (`vis_data/scalars.json`, one row per iteration: `--cfg-options
default_hooks.logger.interval=1`) give the numbers, read after the warm-up:

- tokens_per_s: tokens / seconds summed over the measured iterations (`train/time` of
  IterTimerHook, which includes data loading and every hook; tokens from ThroughputHook);
- peak_gib: the largest `peak_gib` that ThroughputHook logged (allocated peak plus the
  CUDA-graph pools) over the whole run, warm-up included;
- loop_cost: with `--step-jsonl`, the `xft` row of `bench_one_gpu.py` (the bare training
  step, same mode, length and dropout) over this row, minus 1.

The chat-evaluation hook is kept but answers in 2 new tokens (`custom_hooks.1.max_new_tokens=2`)
and no checkpoint is saved until the end, so the measured iterations are plain training.
The random model's tokenizer maps alpaca's words to a 32,000-entry toy vocabulary: the token
ids are meaningless, the packed rows' lengths are not.

Each row appends one JSON line to `<out>/e2e_<date>.jsonl` with `system` (`xft_e2e`), `mode`,
`seq_len`, `tokens_per_s`, `peak_gib`, `config`, `lora_dropout` and the loop cost; the log of
every run goes to `<out>/e2e_logs.txt`, and `<out>/e2e_<date>.md` tabulates them with the
step rows (unsloth, xft) of `--step-jsonl`.
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_one_gpu import LLAMA2_7B_SHAPE  # noqa: E402

CONFIGS = {
    'qlora': REPO / 'configs/llama/llama2_7b/llama2_7b_qlora_alpaca_e3.py',
    'lora': REPO / 'configs/llama/llama2_7b_chat/llama2_7b_chat_lora_alpaca_e3.py',
}
SHIPPED_DROPOUT = 0.1
# Issue 12's targets for the shipped configs: (speed vs unsloth, GiB) per (mode, length).
TARGETS = {('qlora', 2048): (1.5, 6.5), ('qlora', 8192): (1.15, 7.5),
           ('lora', 2048): (1.3, 15.5), ('lora', 8192): (1.15, 16.5)}


def edit_part1(text: str, **values):
    """`text` with PART 1's single-line assignments `name = ...` set to `repr(value)`;
    returns (text, names that PART 1 does not assign).

    >>> edit_part1("# PART 1\\nmax_length = 2048\\n# PART 2\\nx = dict(max_length=max_length)\\n", max_length=8192, lora_dropout=0.0)
    ('# PART 1\\nmax_length = 8192\\n# PART 2\\nx = dict(max_length=max_length)\\n', ['lora_dropout'])
    """
    start = text.index('PART 1')
    end = text.index('PART 2', start)
    part1, missing = text[start:end], []
    for name, value in values.items():
        pattern = re.compile(rf'^{re.escape(name)} = .*$', re.MULTILINE)
        part1, count = pattern.subn(lambda _: f'{name} = {value!r}', part1)
        if count == 0:
            missing.append(name)
        elif count > 1:
            raise ValueError(f'PART 1 assigns {name} {count} times')
    return text[:start] + part1 + text[end:], missing


def write_config(mode, seq_len, dropout, model_dir, data, folder):
    """The zoo config with PART 1 edited; returns (path, extra --cfg-options)."""
    text, missing = edit_part1(CONFIGS[mode].read_text(), pretrained_model_name_or_path=str(model_dir),
                               data_path=str(data), max_length=seq_len, lora_dropout=dropout)
    options = [f'model.lora.lora_dropout={dropout}'] if 'lora_dropout' in missing else []
    missing = [m for m in missing if m != 'lora_dropout']
    if missing:
        raise ValueError(f'{CONFIGS[mode]}: PART 1 does not assign {missing}')
    path = Path(folder) / f'{CONFIGS[mode].stem}_{seq_len}_dropout{dropout}.py'
    path.write_text(text)
    return path, options


def scalars(work_dir: Path):
    """The per-iteration rows of the run's `vis_data/scalars.json`."""
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    if not files:
        return []
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def measure(rows, warmup: int) -> dict:
    """Tokens/s and peaks from the rows of iterations after `warmup`."""
    timed = [r for r in rows if 'tokens_per_sec' in r and 'time' in r and r['iter'] > warmup]
    if not timed:
        return {}
    seconds = sum(r['time'] for r in timed)
    tokens = sum(r['tokens_per_sec'] * r['time'] for r in timed)
    peaks = [r['peak_gib'] for r in rows if 'peak_gib' in r]
    steady = [r['peak_gib'] for r in timed if 'peak_gib' in r]
    memory = [r['memory'] / 1024 for r in rows if 'memory' in r]  # mmengine's, MB, no graph pools
    times = sorted(r['time'] for r in timed)
    out = dict(tokens_per_s=round(tokens / seconds, 1), iter_s=round(seconds / len(timed), 4),
               iter_s_median=round(times[len(times) // 2], 4), measured_iters=len(timed),
               peak_gib=round(max(peaks), 3) if peaks else (round(max(memory), 3) if memory else None),
               steady_peak_gib=round(max(steady), 3) if steady else None,
               first_loss=rows[0].get('loss'), last_loss=timed[-1].get('loss'))
    mfu = [k for k in timed[-1] if k.startswith('mfu_of_')]
    with_mfu = [r for r in timed if mfu and mfu[0] in r]
    if with_mfu:  # time-weighted, like the tokens
        out['mfu'] = round(sum(r[mfu[0]] * r['time'] for r in with_mfu)
                           / sum(r['time'] for r in with_mfu), 4)
        out['mfu_basis'] = mfu[0]
    return out


def step_rows(path):
    """bench_one_gpu.py's timed rows: {(system, mode, seq_len, lora_dropout): row}."""
    out = {}
    if path and Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            if 'tokens_per_s' in r and r.get('setting') not in ('longest', 'check'):
                out[(r['system'], r['mode'], r['seq_len'], float(r.get('lora_dropout', 0.0)))] = r
    return out


def add_loop_cost(record, steps) -> None:
    """The loop's cost: the bare step's speed (bench_one_gpu's `xft` row of the same mode,
    length and dropout) over this row's, minus 1."""
    step = steps.get(('xft', record['mode'], record['seq_len'], float(record['lora_dropout'])))
    if step and record.get('tokens_per_s'):
        record['step_tokens_per_s'] = step['tokens_per_s']
        record['loop_cost'] = round(step['tokens_per_s'] / record['tokens_per_s'] - 1, 4)


def finish(jsonl: Path, step_jsonl) -> str:
    """Loop costs from the step rows now present, the table, and one file of JSON lines
    holding the step rows and the e2e rows (`<out>/results_<date>.jsonl`)."""
    steps = step_rows(step_jsonl)
    records = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.is_file() else []
    for record in records:
        add_loop_cost(record, steps)
    combined = jsonl.with_name(jsonl.name.replace('e2e_', 'results_'))
    combined.write_text(''.join(json.dumps(r) + '\n' for r in list(steps.values()) + records))
    return summarize(records, steps, jsonl.with_suffix('.md'))


def measured_iters(iters: int, seq_len: int) -> int:
    """`iters` at 2,048 tokens, fewer for longer rows (about as many tokens), never fewer than
    one accumulation window of 16.

    >>> measured_iters(32, 2048), measured_iters(32, 8192), measured_iters(3, 256)
    (32, 16, 3)
    """
    return iters if seq_len <= 2048 else max(min(16, iters), iters * 2048 // seq_len)


def run_row(args, mode, seq_len, dropout, folder, env, emit, steps):
    config, options = write_config(mode, seq_len, dropout, args.model_dir, args.data, folder)
    # Work dirs (logs, and nothing else: no checkpoint is saved) outside --out.
    work_dir = Path(args.work_root) / f'{mode}_{seq_len}_dropout{dropout}'
    total = args.warmup + measured_iters(args.iters, seq_len)
    cmd = [sys.executable, str(REPO / 'tools' / 'train.py'), str(config), '--work-dir', str(work_dir),
           '--cfg-options', 'train_cfg.max_epochs=None', f'train_cfg.max_iters={total}',
           'default_hooks.logger.interval=1', f'default_hooks.checkpoint.interval={total + 1}',
           'default_hooks.checkpoint.save_last=False', 'custom_hooks.1.max_new_tokens=2',
           *options, *args.extra_options]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.run_timeout_s)
        status, log = f'rc={proc.returncode}', proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        status = 'timeout'
        log = ''.join(p.decode(errors='replace') if isinstance(p, bytes) else (p or '')
                      for p in (exc.stdout, exc.stderr))
    wall = time.perf_counter() - start
    with (Path(args.out) / 'e2e_logs.txt').open('a') as f:
        f.write(f'===== {config.name}: {status} in {wall:.0f} s\n{log}\n')
    lines = [line for line in log.splitlines() if 'Iter(train)' in line]
    record = dict(system='xft_e2e', mode=mode, seq_len=seq_len, lora_dropout=dropout,
                  config=CONFIGS[mode].stem, status=status, wall_s=round(wall, 1),
                  warmup_iters=args.warmup, **measure(scalars(work_dir), args.warmup),
                  last_log_line=lines[-1].split('  ', 1)[-1][:400] if lines else None)
    add_loop_cost(record, steps)
    emit(record)
    if status != 'rc=0':
        print(log[-3000:], flush=True)


def table_row(mode, seq_len, name, r, unsloth) -> str:
    """One markdown row: speed, memory, ratio to unsloth, loop cost and the target's verdict."""
    head = f'| {mode} | {seq_len:,} | {name} | {r.get("lora_dropout", 0.0)} | '
    tps = r.get('tokens_per_s')
    if not tps:
        return head + f'{r.get("status", "no result")} | | | | |'
    ratio = tps / unsloth['tokens_per_s'] if unsloth else None
    peak = r.get('peak_gib')
    verdict = ''
    target = TARGETS.get((mode, seq_len))
    if target and name.startswith('xft') and ratio and peak is not None:
        verdict = (f'{"yes" if ratio >= target[0] else "no"} speed (≥ {target[0]}x), '
                   f'{"yes" if peak <= target[1] else "no"} memory (≤ {target[1]} GiB)')
    cost = r.get('loop_cost')
    return (head + f'{tps:,.0f} | {"—" if peak is None else f"{peak:.2f}"} | '
            f'{"—" if ratio is None else f"{ratio:.2f}x"} | '
            f'{"—" if cost is None else f"{cost:+.1%}"} | {verdict} |')


def summarize(e2e, steps, md_path: Path) -> str:
    """One table: the step rows (unsloth, xft) and the e2e rows, with ratios to unsloth."""
    gpu = next((r.get('gpu') for r in steps.values() if r.get('gpu')), None)
    lines = [f'# Training through tools/train.py and the bare step ({gpu or "?"}, '
             f'{datetime.date.today().isoformat()})', '',
             'e2e: zoo configs as shipped, PART 1 edited (model, data, max_length, lora_dropout), '
             '`tools/train.py`; step: `bench_one_gpu.py` in the same call. tokens/s per GPU; '
             'peak GiB includes CUDA-graph pools.', '',
             '| mode | tokens | system | lora_dropout | tokens/s | peak GiB | vs unsloth | loop cost | target |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    keys = sorted({(r['mode'], r['seq_len']) for r in e2e} | {(k[1], k[2]) for k in steps})
    for mode, seq_len in keys:
        unsloth = next((r for k, r in steps.items() if k[:3] == ('unsloth', mode, seq_len)), None)
        rows = [(k[0], r) for k, r in sorted(steps.items()) if k[1:3] == (mode, seq_len)]
        rows += [(f'xft_e2e ({r["config"]})', r) for r in e2e if (r['mode'], r['seq_len']) == (mode, seq_len)]
        for name, r in rows:
            lines.append(table_row(mode, seq_len, name, r, unsloth))
    pairs = []
    for r in e2e:
        if r['lora_dropout'] == SHIPPED_DROPOUT:
            other = next((o for o in e2e if (o['mode'], o['seq_len']) == (r['mode'], r['seq_len'])
                          and o['lora_dropout'] == 0.0), None)
            if other and r.get('tokens_per_s') and other.get('tokens_per_s'):
                memory = ('' if r.get('peak_gib') is None or other.get('peak_gib') is None else
                          f', {r["peak_gib"] - other["peak_gib"]:+.2f} GiB')
                pairs.append(f'- {r["mode"]} {r["seq_len"]:,}: dropout {SHIPPED_DROPOUT} runs at '
                             f'{r["tokens_per_s"] / other["tokens_per_s"]:.3f}x the speed of dropout 0'
                             f'{memory} (target: within 5 %)')
    if pairs:
        lines += ['', '## Dropout as shipped against dropout 0 (same config, same call)', ''] + pairs
    text = '\n'.join(lines) + '\n'
    md_path.write_text(text)
    return text


def make_tiny_model(model_dir: Path) -> None:
    """The smoke test's model: a 2-layer, 64-wide Llama with the benchmark's tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    if (model_dir / 'config.json').exists():
        return
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=LLAMA2_7B_SHAPE['vocab_size'],
                         max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(model_dir)
    vocab = {'<unk>': 0, '<s>': 1, '</s>': 2, '<pad>': 3}
    vocab.update({f't{i}': i for i in range(4, config.vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>', eos_token='</s>', unk_token='<unk>',
                            pad_token='<pad>').save_pretrained(model_dir)


def default_data() -> Path:
    for candidate in (REPO / 'shared/data/alpaca/alpaca_data_subset.json',
                      REPO.parent / 'shared/data/alpaca/alpaca_data_subset.json'):
        if candidate.is_file():
            return candidate
    return REPO / 'shared/data/alpaca/alpaca_data_subset.json'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=str(REPO / 'benchmarks' / 'results'))
    p.add_argument('--model-dir', default='/tmp/llama2_7b_random')
    p.add_argument('--data', default=str(default_data()))
    p.add_argument('--modes', default='qlora,lora')
    p.add_argument('--seqs', default='2048,8192')
    p.add_argument('--dropouts', default=f'{SHIPPED_DROPOUT},0.0', help='lora_dropout values, shipped first')
    p.add_argument('--warmup', type=int, default=16, help='iterations before measuring (one accumulation window)')
    p.add_argument('--iters', type=int, default=32,
                   help='measured iterations at 2k tokens (two accumulation windows); one window at 8k')
    p.add_argument('--step-jsonl', help="bench_one_gpu.py's JSON lines from the same call (loop cost, table)")
    p.add_argument('--run-timeout-s', type=float, default=300)
    p.add_argument('--work-root', default='/tmp/xft_e2e_runs', help='the runs\' work dirs')
    p.add_argument('--smoke', action='store_true', help='CPU: a tiny model, 256-token rows, 2 + 3 iterations')
    p.add_argument('--summarize', action='store_true',
                   help="only redo the table and loop costs from today's JSON lines in --out")
    p.add_argument('--extra-options', nargs='*', default=[], help='more --cfg-options for every run')
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / f'e2e_{datetime.date.today().isoformat()}.jsonl'
    if args.summarize:
        print(finish(jsonl, args.step_jsonl))
        return 0
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', TOKENIZERS_PARALLELISM='false',
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
    if args.smoke:
        args.model_dir = str(Path(args.work_root) / 'tiny_model')
        make_tiny_model(Path(args.model_dir))
        if args.seqs == p.get_default('seqs'):
            args.seqs = '256'
        args.warmup, args.iters = min(args.warmup, 2), min(args.iters, 3)
        args.extra_options += ['train_dataloader.dataset.max_dataset_length=64',
                               'train_dataloader.dataset.map_num_proc=1']
    elif not (Path(args.model_dir) / 'config.json').exists():
        subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'bench_one_gpu.py'), '--make-model',
                        '--model-dir', args.model_dir, '--max-positions', '8192'], check=True, env=env)
    if not Path(args.data).is_file():
        p.error(f'{args.data}: the alpaca subset is not there (give --data)')
    steps = step_rows(args.step_jsonl)
    records = []

    def emit(record):
        records.append(record)
        with jsonl.open('a') as f:
            f.write(json.dumps(record) + '\n')
        print(json.dumps(record), flush=True)

    folder = out / 'e2e_configs'  # the edited configs, to read back what ran
    folder.mkdir(exist_ok=True)
    # Shorter rows first: if the call runs out of time, the 2k rows are there.
    for seq_len in [int(s) for s in args.seqs.split(',') if s]:
        for mode in args.modes.split(','):
            for dropout in [float(d) for d in args.dropouts.split(',') if d]:
                run_row(args, mode, seq_len, dropout, folder, env, emit, steps)
    print(finish(jsonl, args.step_jsonl))
    return 0 if records and all(r['status'] == 'rc=0' for r in records) else 1


if __name__ == '__main__':
    sys.exit(main())
