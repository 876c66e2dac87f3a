#!/bin/bash
# On a machine with N >= 2 GPUs, one phase per call. Nothing here has run on GPUs yet: the
# times are estimates (about 1-1.5 min per training run: start, 7B load, 32 iterations), and a
# fresh machine first writes the random 7B model (about 1-2 min). Four runs per call fit a
# 10-minute call; pass --seqs 2048 or --seqs 8192 to halve a phase:
#   ddp            QLoRA and LoRA under StepDataParallel, 2,048 and 8,192 tokens, 1 GPU vs N
#   checks         equality (30 optimizer steps, N GPUs vs 1 GPU with N x accumulation) and the
#                  resume of the N-GPU checkpoint on 1 GPU (refused in one line)
#   zero2          LoRA under DeepSpeed ZeRO-2
#   zero3          full fine-tuning under ZeRO-3 (1 GPU may run out of memory: its row says so)
#   zero3_offload  full fine-tuning under ZeRO-3 with optimizer and parameters on the CPU
#                  (both ZeRO-3 phases: 4 + 8 iterations in windows of 4, not 16 + 16 in 16)
#   ddp_torch      QLoRA and LoRA under torch's DDP (graphs off): the before of `ddp`
#   all            everything above but ddp_torch, in one call (needs a longer limit)
#   smoke          the CPU smoke (gloo, tiny model, 2 processes) on this machine
#   bash benchmarks/run_multi_gpu.sh OUT_DIR PHASE [bench_multi_gpu.py options...]
# Results: OUT_DIR/multi_gpu_<date>.jsonl (appended by every call), .md (this call's table),
# multi_gpu_logs.txt. Packages, carried (carry=['.whl/site.tar.xz', '.whl/multi_gpu']): the
# site of run_on_device.sh (mmengine, datasets, bitsandbytes ...) and, for the ZeRO phases, the
# wheels of benchmarks/pack_multi_gpu_wheels.sh (deepspeed 0.18.9, hjson, pydantic 2), installed
# into /tmp/site here; without deepspeed the ZeRO rows say "skipped".
# NVLink multicast stays off in every process (also set by bench_multi_gpu.py for each run).
set -o pipefail
out=$1; phase=${2:-ddp}; shift; [ $# -gt 0 ] && shift
mkdir -p "$out"
if [ -f .whl/site.tar.xz ]; then
  mkdir -p /tmp/site && tar -xJf .whl/site.tar.xz -C /tmp/site || exit 1
fi
if ls .whl/multi_gpu/*.whl >/dev/null 2>&1; then  # benchmarks/pack_multi_gpu_wheels.sh's (deepspeed ...)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/multi_gpu/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
bench() { python3 benchmarks/bench_multi_gpu.py --out "$out" "$@"; }
echo "== $(date +%T) $phase"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 -c 'import torch; print("torch", torch.__version__, "GPUs", torch.cuda.device_count())'
python3 -c 'import deepspeed; print("deepspeed", deepspeed.__version__)' 2>/dev/null || echo "deepspeed: not importable"
case $phase in
  ddp|zero2|ddp_torch) bench --phases speed --strategies "$phase" "$@" ;;
  zero3|zero3_offload) bench --phases speed --strategies "$phase" --warmup 4 --measured 8 --accumulation 4 "$@" ;;
  checks) bench --phases equality,resume "$@" ;;
  all) bench "$@" ;;
  smoke) bench --smoke "$@" ;;
  *) echo "unknown phase $phase"; exit 2 ;;
esac
status=$?
echo "== $(date +%T) done ($status)"
exit $status
