#!/bin/bash
# The sequence-parallel GPU kit (issue 18), on a machine with 2 or more GPUs, in one call:
#   bash benchmarks/run_sequence_parallel.sh OUT_DIR [PHASES] [LONGEST]
# PHASES, a comma list (default check,model,one,sp):
#   check  parity of a row split over $NPROC GPUs with the whole row (bench_sequence_parallel.py
#          --check: a small bf16 Llama, packed and padded rows); stops the call if it fails
#   model  the Llama-2-7B-shaped random model (bench_one_gpu.make_model) in $MODEL
#   one    one GPU, no sequence parallelism: tokens/s at $SEQS (the reference)
#   sp     $NPROC GPUs (default 2), sequence_parallel_size $SP (default $NPROC): tokens/s at $SEQS,
#          then single steps at LONGEST (default 262144,393216,524288), each skipped when predicted
#          to pass $CAP_S seconds (default 420)
#   table  the markdown table of everything in OUT_DIR so far (always run last)
# Carry .whl/site.tar.xz (mmengine, bitsandbytes and their pure-Python needs, as for
# run_on_device.sh). A 512k-token step takes minutes: split the ladder over calls on a warm
# machine, e.g. `... OUT check,model,one,sp 262144` then `... OUT sp 524288` (SEQS= to skip the 32k rows).
# $OFFLOAD_GIB (default: xft train's 32) is the pinned host memory per process for checkpoints.
set -o pipefail
out=$1; shift
phases=${1:-check,model,one,sp}; [ $# -gt 0 ] && shift
longest=${1:-262144,393216,524288}
nproc=${NPROC:-2}; sp=${SP:-$nproc}; seqs=${SEQS-32768}; cap=${CAP_S:-420}
model=${MODEL:-/tmp/llama2_7b_random}
mkdir -p /tmp/site "$out" && tar -xJf .whl/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
# NVLink multicast off (the machines' KINDS.md): NCCL's NVLS, torch's and NVSHMEM's.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
has() { [[ ",$phases," == *",$1,"* ]]; }
stamp() { echo "== $(date +%T) $*"; }
offload=${OFFLOAD_GIB:+--offload-host-gib $OFFLOAD_GIB}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if has check; then
  stamp check; torchrun --nproc_per_node=$nproc benchmarks/bench_sequence_parallel.py --check --sp $sp --out "$out" \
    || exit 1
fi
if has model; then
  stamp model; python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; \
from bench_one_gpu import make_model; make_model(Path('$model'), 1048576)" || exit 1
fi
if has one; then
  stamp one; CUDA_VISIBLE_DEVICES=0 python3 benchmarks/bench_sequence_parallel.py --model-dir $model --out "$out" \
    --seqs "$seqs" $offload
fi
if has sp; then
  stamp sp; torchrun --nproc_per_node=$nproc benchmarks/bench_sequence_parallel.py --model-dir $model --out "$out" \
    --sp $sp --seqs "$seqs" --longest "$longest" --longest-cap-s $cap $offload
fi
stamp table; python3 benchmarks/bench_sequence_parallel.py --summarize "$out"
stamp done
