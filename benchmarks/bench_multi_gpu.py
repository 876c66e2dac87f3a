"""Several GPUs against one, through the user's path (`tools/train.py`, torchrun).

    python benchmarks/bench_multi_gpu.py --out DIR --gpus 2                  # every phase
    python benchmarks/bench_multi_gpu.py --out DIR --gpus 2 --phases speed --strategies ddp
    python benchmarks/bench_multi_gpu.py --smoke --out /tmp/multi_gpu_smoke  # CPU, gloo, tiny model

Phases:

speed     For each setting, the same config trained on 1 GPU and on N GPUs in the same call:
          QLoRA and LoRA under xft's data-parallel wrapper (strategy `ddp`: StepDataParallel,
          CUDA graphs on), LoRA under ZeRO-2 (`zero2`), full fine-tuning under ZeRO-3 without
          and with CPU offload (`zero3`, `zero3_offload`); `ddp_torch` (torch's DDP, graphs off:
          the path of issue 13's first measurement) on request. Rows are packed to each of
          `--seqs` tokens. The 1-GPU run of `ddp` is plain `python tools/train.py` (no process
          group, what a user runs on one GPU); that of a ZeRO strategy is the same strategy on
          one process. The configs are zoo configs with only PART 1 edited, as in
          bench_train_e2e.py: QLoRA llama2_7b_qlora_alpaca_e3, LoRA llama2_7b_chat_lora_alpaca_e3,
          full llama2_7b_chat_full_alpaca_e3, pointed at the random Llama-2-7B-shaped model
          (bench_one_gpu.py --make-model) and the shared alpaca subset, lora_dropout 0.
equality  30 optimizer steps on N GPUs (accumulation 1) against 1 GPU with N times the
          accumulation: same data (seed 42), constant learning rate; rank 0's loss of iteration
          k against the 1-GPU loss of iteration N(k-1)+1, and the trained weights of the two
          final checkpoints, each to a bf16 tolerance.
resume    The N-GPU checkpoint of `equality` resumed on 1 GPU: refused with one line and exit
          code 2 (a resume must not silently continue another run's data order).

Measured (`speed`), from rank 0's own scalars after `--warmup` iterations (bench_train_e2e's
`measure`): `tokens_per_s_per_gpu` (ThroughputHook's per-device tokens/s: non-padding
tokens over IterTimerHook's iteration time, data and hooks included), `tokens_per_s`
(times the GPUs: the ranks train equal rows in lockstep), `scaling_efficiency` (per-GPU
tokens/s on N GPUs over that on 1 GPU of the same setting), `peak_gib_per_gpu` (rank 0's
ThroughputHook peak: allocated peak plus CUDA-graph pools) and its difference to 1 GPU.
Every setting measures whole accumulation windows (`--accumulation`), so the once-per-step
reduction and the optimizer step are inside the measured time.

Every launched process runs with NVLink multicast off (NCCL_NVLS_ENABLE=0,
TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1). Output in `--out`: one JSON line
per run and per check in `multi_gpu_<date>.jsonl` (fields `system`, `mode`, `seq_len`,
`world_size`, `strategy`, `tokens_per_s`, `tokens_per_s_per_gpu`, `scaling_efficiency`,
`peak_gib_per_gpu`, ...), every run's log in `multi_gpu_logs.txt`, the table in
`multi_gpu_<date>.md`.
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
import bench_train_e2e as e2e  # noqa: E402

CONFIGS = dict(e2e.CONFIGS, full=REPO / 'configs/llama/llama2_7b_chat/llama2_7b_chat_full_alpaca_e3.py')
# strategy -> (the modes it trains, its --deepspeed config or None)
STRATEGIES = {
    'ddp': (('qlora', 'lora'), None),
    'zero2': (('lora', ), 'deepspeed_zero2'),
    'zero3': (('full', ), 'deepspeed_zero3'),
    'zero3_offload': (('full', ), 'deepspeed_zero3_offload'),
    'ddp_torch': (('qlora', 'lora'), None),  # torch's DDP (graphs off): before/after, on request
}
DEFAULT_STRATEGIES = 'ddp,zero2,zero3,zero3_offload'
NO_MULTICAST = {'NCCL_NVLS_ENABLE': '0', 'TORCH_SYMM_MEM_DISABLE_MULTICAST': '1', 'NVSHMEM_DISABLE_NVLS': '1'}
REFUSAL = 'resuming with another process count is refused'
SEED = 42


# ----------------------------------------------------------------------------------------
# configs and commands
# ----------------------------------------------------------------------------------------
def write_config(mode, seq_len, model_dir, data, folder, dtype=None):
    """The zoo config of ``mode`` with PART 1 edited; returns (path, extra --cfg-options)."""
    values = dict(pretrained_model_name_or_path=str(model_dir), data_path=str(data), max_length=seq_len)
    if mode != 'full':
        values['lora_dropout'] = 0.0
    text, missing = e2e.edit_part1(CONFIGS[mode].read_text(), **values)
    if dtype is not None:  # the CPU smoke trains in float32 (DeepSpeed on CPU has no bf16)
        text = text.replace('torch_dtype = torch.bfloat16', f'torch_dtype = torch.{dtype}')
    options = ['model.lora.lora_dropout=0.0'] if 'lora_dropout' in missing else []
    missing = [name for name in missing if name != 'lora_dropout']
    if missing:
        raise ValueError(f'{CONFIGS[mode]}: PART 1 does not assign {missing}')
    path = Path(folder) / f'{CONFIGS[mode].stem}_{seq_len}.py'
    path.write_text(text)
    return path, options


def config_lr(config: Path) -> str:
    """PART 1's learning rate as written (``lr = 2e-4``)."""
    return re.search(r'^lr = (\S+)', config.read_text(), re.MULTILINE).group(1)


def launcher(world_size: int, strategy: str) -> list:
    """How tools/train.py starts: plain for 1-GPU data parallelism, torchrun otherwise."""
    if world_size == 1 and STRATEGIES[strategy][1] is None:
        return [sys.executable, str(REPO / 'tools' / 'train.py')]
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={world_size}',
            str(REPO / 'tools' / 'train.py')]


def train_command(config, work_dir, world_size, strategy, options, extra=()) -> list:
    command = launcher(world_size, strategy) + [str(config), '--work-dir', str(work_dir), *extra]
    if command[1] == '-m':
        command += ['--launcher', 'pytorch']
    if STRATEGIES[strategy][1]:
        command += ['--deepspeed', STRATEGIES[strategy][1]]
    if strategy == 'ddp_torch':
        options = [*options, 'model_wrapper_cfg.type=MMDistributedDataParallel']
    return command + ['--cfg-options', *options]


def run_options(total: int, accumulation: int, save: bool = False) -> list:
    """Iteration-based run of ``total`` iterations, each logged with its own values (the zoo's
    log processor would average the last 10), the chat hook answering in 2 tokens, a
    checkpoint only at the end when ``save``."""
    return ['train_cfg.max_epochs=None', f'train_cfg.max_iters={total}', 'default_hooks.logger.interval=1',
            'log_processor.window_size=1',
            f'default_hooks.checkpoint.interval={total + 1}', f'default_hooks.checkpoint.save_last={save}',
            'custom_hooks.1.max_new_tokens=2', f'optim_wrapper.accumulative_counts={accumulation}']


def devices_env(env: dict, world_size: int, cuda: bool) -> dict:
    env = dict(env, **NO_MULTICAST)
    if cuda:
        env['CUDA_VISIBLE_DEVICES'] = ','.join(str(i) for i in range(world_size))
    return env


def run(command, env, timeout, log_file: Path, title: str):
    """(status, log text, seconds); the log is appended to ``log_file``."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        status, log = f'rc={proc.returncode}', proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        status = 'timeout'
        log = ''.join(p.decode(errors='replace') if isinstance(p, bytes) else (p or '')
                      for p in (exc.stdout, exc.stderr))
    wall = time.perf_counter() - start
    with log_file.open('a') as f:
        f.write(f'===== {title}: {status} in {wall:.0f} s\n$ {" ".join(map(str, command))}\n{log}\n')
    return status, log, wall


def graphs_state(log: str) -> str:
    """Whether the run's layers replayed CUDA graphs, as its log says."""
    if 'CUDA graphs are off' in log:
        return 'off'
    if 'CUDA graphs stay on' in log or '(CUDA graphs)' in log:
        return 'on'
    return 'n/a'


def wrapper_of(log: str) -> str:
    """The model wrapper the run used, as its log says."""
    if 'StepDataParallel: ' in log:
        return 'StepDataParallel'
    if 'DeepSpeed ZeRO-' in log:
        return 'DeepSpeed'
    if 'Distributed training is not used' in log:
        return 'none'
    return 'DDP'


def failure(log: str) -> str:
    lines = [line for line in log.strip().splitlines() if line.strip()]
    for marker in ('OutOfMemoryError', 'CUDA out of memory', 'xft train:', 'Error'):
        found = [line for line in lines if marker in line]
        if found:
            return found[-1][:300]
    return lines[-1][:300] if lines else ''


# ----------------------------------------------------------------------------------------
# speed
# ----------------------------------------------------------------------------------------
def speed_row(args, ctx, strategy, mode, seq_len, world_size):
    config, options = write_config(mode, seq_len, args.model_dir, args.data, ctx['folder'], args.dtype)
    work_dir = Path(args.work_root) / f'{strategy}_{mode}_{seq_len}_{world_size}gpu'
    total = args.warmup + args.measured
    command = train_command(config, work_dir, world_size, strategy,
                            options + run_options(total, args.accumulation) + args.extra_options)
    status, log, wall = run(command, devices_env(ctx['env'], world_size, ctx['cuda']), args.run_timeout_s,
                            ctx['logs'], f'{strategy} {mode} {seq_len} on {world_size}')
    measured = e2e.measure(e2e.scalars(work_dir), args.warmup)
    per_gpu = measured.get('tokens_per_s')
    record = dict(system='xft', mode=mode, seq_len=seq_len, world_size=world_size, strategy=strategy,
                  tokens_per_s=round(per_gpu * world_size, 1) if per_gpu else None,
                  tokens_per_s_per_gpu=per_gpu, scaling_efficiency=None,
                  peak_gib_per_gpu=measured.get('peak_gib'), steady_peak_gib_per_gpu=measured.get('steady_peak_gib'),
                  iter_s=measured.get('iter_s'), measured_iters=measured.get('measured_iters'),
                  warmup_iters=args.warmup, accumulation=args.accumulation, cuda_graphs=graphs_state(log),
                  wrapper=wrapper_of(log),
                  config=CONFIGS[mode].stem, status=status, wall_s=round(wall, 1), gpu=ctx['gpu'],
                  date=ctx['day'])
    if status != 'rc=0' or not per_gpu:
        record['error'] = failure(log)
    return record


def add_scaling(record: dict, one_gpu: dict) -> None:
    """Scaling efficiency and memory difference of an N-GPU record against its 1-GPU run."""
    if record['world_size'] == 1:
        record['scaling_efficiency'] = 1.0 if record['tokens_per_s_per_gpu'] else None
        return
    base, mine = one_gpu.get('tokens_per_s_per_gpu'), record.get('tokens_per_s_per_gpu')
    if base and mine:
        record['scaling_efficiency'] = round(mine / base, 4)
    if one_gpu.get('peak_gib_per_gpu') is not None and record.get('peak_gib_per_gpu') is not None:
        record['peak_gib_vs_1gpu'] = round(record['peak_gib_per_gpu'] - one_gpu['peak_gib_per_gpu'], 3)


def phase_speed(args, ctx, emit):
    for seq_len in [int(s) for s in args.seqs.split(',') if s]:
        for strategy in args.strategies.split(','):
            modes, deepspeed = STRATEGIES[strategy]
            for mode in modes:
                if args.modes and mode not in args.modes.split(','):
                    continue
                if deepspeed and not ctx['deepspeed']:
                    emit(dict(system='xft', mode=mode, seq_len=seq_len, world_size=args.gpus, strategy=strategy,
                              status='skipped: deepspeed is not importable', date=ctx['day']))
                    continue
                one = speed_row(args, ctx, strategy, mode, seq_len, 1)
                add_scaling(one, one)
                emit(one)
                many = speed_row(args, ctx, strategy, mode, seq_len, args.gpus)
                add_scaling(many, one)
                emit(many)


# ----------------------------------------------------------------------------------------
# equality and resume
# ----------------------------------------------------------------------------------------
def trained_weights(work_dir: Path, iteration: int) -> dict:
    import torch
    path = work_dir / f'iter_{iteration}.pth'
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


def compare_weights(one: dict, many: dict) -> dict:
    """The largest difference of a trained tensor, relative to that tensor's largest value,
    and how far LoRA's B matrices (zero at the start) moved, relative to the same scale."""
    assert sorted(one) == sorted(many), 'the checkpoints hold different tensors'
    worst, moved = 0.0, []
    for name, value in one.items():
        scale = float(value.float().abs().max()) or 1.0
        worst = max(worst, float((many[name].float() - value.float()).abs().max()) / scale)
        if 'lora_B' in name:
            moved.append(scale)
    return dict(max_rel_weight_diff=worst, tensors=len(one),
                lora_B_min_max_abs=min(moved) if moved else None)


def phase_equality(args, ctx, emit):
    n, steps = args.gpus, args.equality_steps
    config, options = write_config(args.check_mode, args.check_seq, args.model_dir, args.data, ctx['folder'],
                                   args.dtype)
    # Constant learning rate: warm-up and cosine counted in epochs of another length on N GPUs
    # would round differently; the check is about the gradients.
    constant = ['param_scheduler.0.start_factor=1.0', f'param_scheduler.1.eta_min={config_lr(config)}']
    runs = {}
    for world_size, accumulation, iterations in ((1, n, steps * n), (n, 1, steps)):
        work_dir = Path(args.work_root) / f'equality_{world_size}gpu'
        command = train_command(config, work_dir, world_size, 'ddp',
                                options + constant + run_options(iterations, accumulation, save=True)
                                + args.extra_options, extra=('--seed', str(SEED)))
        status, log, _ = run(command, devices_env(ctx['env'], world_size, ctx['cuda']), args.run_timeout_s,
                             ctx['logs'], f'equality on {world_size}')
        runs[world_size] = (work_dir, iterations, status, log)
    record = dict(check='equality', system='xft', mode=args.check_mode, seq_len=args.check_seq, world_size=n,
                  strategy='ddp', optimizer_steps=steps, reference=f'1 GPU, accumulation {n}', date=ctx['day'],
                  gpu=ctx['gpu'], loss_tolerance=args.loss_tolerance, weight_tolerance=args.weight_tolerance)
    failed = [f'{w} GPU: {failure(log)}' for w, (_, _, status, log) in runs.items() if status != 'rc=0']
    if failed:
        record.update(status='failed', passed=False, error='; '.join(failed))
        emit(record)
        return runs
    single = {row['iter']: row['loss'] for row in e2e.scalars(runs[1][0]) if 'loss' in row}
    multi = {row['iter']: row['loss'] for row in e2e.scalars(runs[n][0]) if 'loss' in row}
    pairs = [(multi[k], single.get(n * (k - 1) + 1)) for k in range(1, steps + 1) if k in multi]
    diffs = [abs(a - b) for a, b in pairs if b is not None]
    record.update(compared_losses=len(diffs), max_loss_diff=max(diffs) if diffs else None,
                  first_loss=pairs[0][1] if pairs else None, last_loss=pairs[-1][1] if pairs else None,
                  **compare_weights(trained_weights(runs[1][0], runs[1][1]), trained_weights(runs[n][0], steps)))
    record['passed'] = bool(len(diffs) == steps and record['max_loss_diff'] <= args.loss_tolerance
                            and record['max_rel_weight_diff'] <= args.weight_tolerance)
    record['status'] = 'passed' if record['passed'] else 'failed'
    emit(record)
    return runs


def phase_resume(args, ctx, emit, runs):
    n = args.gpus
    work_dir, iterations, status, _ = runs.get(n, (None, None, 'not run', ''))
    checkpoint = work_dir / f'iter_{iterations}.pth' if work_dir else None
    record = dict(check='resume_world_size', system='xft', saved_world_size=n, world_size=1, date=ctx['day'])
    if checkpoint is None or not checkpoint.exists():
        record.update(status=f'no {n}-GPU checkpoint (equality run: {status})', passed=False)
        emit(record)
        return
    config, options = write_config(args.check_mode, args.check_seq, args.model_dir, args.data, ctx['folder'],
                                   args.dtype)
    command = train_command(config, Path(args.work_root) / 'resume_1gpu', 1, 'ddp',
                            options + run_options(iterations + 1, n) + args.extra_options,
                            extra=('--resume', str(checkpoint), '--seed', str(SEED)))
    status, log, _ = run(command, devices_env(ctx['env'], 1, ctx['cuda']), args.run_timeout_s, ctx['logs'],
                         'resume on 1')
    refusal = [line for line in log.splitlines() if line.startswith('xft train:')]
    record.update(status=status, line=refusal[-1] if refusal else failure(log),
                  passed=status == 'rc=2' and bool(refusal) and REFUSAL in refusal[-1])
    emit(record)


# ----------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------
def summarize(records, md_path: Path) -> str:
    gpu = next((r.get('gpu') for r in records if r.get('gpu')), '?')
    lines = [f'# Several GPUs through tools/train.py ({gpu}, {datetime.date.today().isoformat()})', '',
             'tokens/s per GPU from rank 0\'s log; efficiency: per-GPU tokens/s over 1 GPU of the same setting '
             'in the same call; peak GiB per GPU includes CUDA-graph pools.', '',
             '| strategy | mode | tokens | GPUs | tokens/s (all) | tokens/s per GPU | efficiency | peak GiB per GPU '
             '| vs 1 GPU | graphs | status |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']

    def cell(value, fmt):
        return '—' if value is None else format(value, fmt)

    for r in records:
        if 'check' in r:
            continue
        lines.append(f'| {r["strategy"]} | {r["mode"]} | {r["seq_len"]:,} | {r["world_size"]} | '
                     f'{cell(r.get("tokens_per_s"), ",.0f")} | {cell(r.get("tokens_per_s_per_gpu"), ",.0f")} | '
                     f'{cell(r.get("scaling_efficiency"), ".1%")} | {cell(r.get("peak_gib_per_gpu"), ".2f")} | '
                     f'{cell(r.get("peak_gib_vs_1gpu"), "+.2f")} | {r.get("cuda_graphs", "")} | '
                     f'{r.get("status", "")} {r.get("error", "")[:80]} |')
    checks = [r for r in records if 'check' in r]
    if checks:
        lines += ['', '## Checks', '']
        for r in checks:
            if r['check'] == 'equality':
                lines.append(f'- equality ({r["mode"]} {r["seq_len"]:,}, {r["optimizer_steps"]} steps, {r["world_size"]} '
                             f'GPUs vs {r["reference"]}): {r["status"]}; largest loss difference '
                             f'{cell(r.get("max_loss_diff"), ".2e")} (tolerance {r["loss_tolerance"]}), largest '
                             f'relative weight difference {cell(r.get("max_rel_weight_diff"), ".2e")} (tolerance '
                             f'{r["weight_tolerance"]}), LoRA B moved to {cell(r.get("lora_B_min_max_abs"), ".2e")} '
                             f'or more {r.get("error", "")}')
            else:
                lines.append(f'- resume of a {r["saved_world_size"]}-GPU checkpoint on 1 GPU: {r["status"]}, '
                             f'{"passed" if r.get("passed") else "FAILED"}: `{r.get("line", "")}`')
    text = '\n'.join(lines) + '\n'
    md_path.write_text(text)
    return text


# ----------------------------------------------------------------------------------------
_PROBE = ('import json, torch; n = torch.cuda.device_count(); '
          'print(json.dumps([n, torch.cuda.get_device_name(0) if n else "cpu"]))')


def context(args, out: Path) -> dict:
    """The runs' environment and what this machine has (asked in child processes: the driver
    keeps no CUDA context on GPU 0 while the runs use it)."""
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', TOKENIZERS_PARALLELISM='false',
               PYTHONUNBUFFERED='1', PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
    count, gpu = json.loads(subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True, text=True,
                                           check=True).stdout.strip().splitlines()[-1])
    if not count:
        env.update(OMP_NUM_THREADS='1', DS_ACCELERATOR='cpu')
    probe = subprocess.run([sys.executable, '-c', 'import deepspeed'], env=env, capture_output=True, text=True)
    folder = out / 'multi_gpu_configs'  # the edited configs, to read back what ran
    folder.mkdir(exist_ok=True)
    return dict(env=env, cuda=count > 0, gpus=count, deepspeed=probe.returncode == 0, folder=folder,
                logs=out / 'multi_gpu_logs.txt', gpu=gpu, day=datetime.date.today().isoformat())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=str(REPO / 'benchmarks' / 'results'))
    p.add_argument('--gpus', type=int, default=None, help='N, the GPUs (processes) of the multi-GPU runs '
                   '(default: every visible GPU; 2 with --smoke)')
    p.add_argument('--phases', default='speed,equality,resume')
    p.add_argument('--strategies', default=DEFAULT_STRATEGIES, help=f'of {", ".join(STRATEGIES)}')
    p.add_argument('--modes', default='', help='only these modes (qlora, lora, full)')
    p.add_argument('--seqs', default='2048,8192')
    p.add_argument('--model-dir', default='/tmp/llama2_7b_random')
    p.add_argument('--data', default=str(e2e.default_data()))
    p.add_argument('--warmup', type=int, default=16, help='iterations before measuring (whole windows)')
    p.add_argument('--measured', type=int, default=16, help='measured iterations (whole windows)')
    p.add_argument('--accumulation', type=int, default=16, help='micro-batches per optimizer step (the zoo\'s 16)')
    p.add_argument('--check-mode', default='qlora')
    p.add_argument('--check-seq', type=int, default=2048)
    p.add_argument('--equality-steps', type=int, default=30)
    p.add_argument('--loss-tolerance', type=float, default=0.02, help='bf16: absolute, on losses near 10.4')
    p.add_argument('--weight-tolerance', type=float, default=0.02, help='bf16: relative to each tensor\'s largest value')
    p.add_argument('--run-timeout-s', type=float, default=300, help='per training run')
    p.add_argument('--work-root', default='/tmp/xft_multi_gpu_runs', help='the runs\' work dirs')
    p.add_argument('--dtype', default=None, help=argparse.SUPPRESS)
    p.add_argument('--smoke', action='store_true', help='CPU: gloo, a tiny model, 2 processes, 256-token rows')
    p.add_argument('--extra-options', nargs='*', default=[], help='more --cfg-options for every run')
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.model_dir = str(Path(args.work_root) / 'tiny_model')
        e2e.make_tiny_model(Path(args.model_dir))
        args.gpus = args.gpus or 2
        if args.seqs == p.get_default('seqs'):
            args.seqs = '256'
        args.check_seq = min(args.check_seq, 256)
        args.warmup, args.measured, args.accumulation = min(args.warmup, 2), min(args.measured, 2), 2
        args.equality_steps = min(args.equality_steps, 4)
        args.dtype = 'float32'
        args.loss_tolerance, args.weight_tolerance = 1e-4, 1e-4  # float32
        args.extra_options += ['train_dataloader.dataset.max_dataset_length=64',
                               'train_dataloader.dataset.map_num_proc=1']
    ctx = context(args, out)
    if args.gpus is None:
        args.gpus = ctx['gpus']
    if args.gpus < 2:
        p.error(f'--gpus {args.gpus}: the comparison needs at least 2 GPUs')
    if ctx['cuda'] and args.gpus > ctx['gpus']:
        p.error(f'--gpus {args.gpus}: this machine has {ctx["gpus"]}')
    if not args.smoke and not (Path(args.model_dir) / 'config.json').exists():
        subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'bench_one_gpu.py'), '--make-model', '--model-dir',
                        args.model_dir, '--max-positions', '8192'], check=True,
                       env=dict(ctx['env'], CUDA_VISIBLE_DEVICES='0'))
    if not Path(args.data).is_file():
        p.error(f'{args.data}: the alpaca subset is not there (give --data)')
    jsonl = out / f'multi_gpu_{ctx["day"]}.jsonl'
    records = []

    def emit(record):
        records.append(record)
        with jsonl.open('a') as f:
            f.write(json.dumps(record) + '\n')
        print(json.dumps(record), flush=True)

    phases = args.phases.split(',')
    if 'speed' in phases:
        phase_speed(args, ctx, emit)
    runs = phase_equality(args, ctx, emit) if 'equality' in phases or 'resume' in phases else {}
    if 'resume' in phases:
        phase_resume(args, ctx, emit, runs)
    print(summarize(records, jsonl.with_suffix('.md')))
    ok = all(r.get('status') == 'rc=0' for r in records if 'check' not in r and 'skipped' not in r.get('status', ''))
    return 0 if records and ok and all(r.get('passed', True) for r in records if 'check' in r) else 1


if __name__ == '__main__':
    sys.exit(main())
