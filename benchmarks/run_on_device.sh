#!/bin/bash
# On the GPU machine, in one call: unpack the carried packages (.whl/site.tar.xz: unsloth,
# bitsandbytes, mmengine, datasets<5 and their pure-Python needs), then the phases in order:
#   check         benchmarks/check_kernels_gpu.py (kernel parity, dropout kernel, graphs)
#   step          bench_one_gpu.py: unsloth and xft, QLoRA/LoRA at 2k/8k, dropout 0
#   e2e           bench_train_e2e.py: the zoo configs through tools/train.py, dropout 0.1 and 0
#   step_dropout  bench_one_gpu.py: xft again with lora_dropout 0.1 (the loop cost of the
#                 shipped rows)
# and finally the table (e2e_<date>.md) and one file of JSON lines (results_<date>.jsonl).
#   bash benchmarks/run_on_device.sh OUT_DIR [PHASES] [bench_one_gpu.py options...]
# PHASES is a comma list (default check,step,e2e,step_dropout). About 20 minutes on an H200.
# The alpaca subset is read from shared/data/alpaca/alpaca_data_subset.json in the checkout,
# or from $DATA; $E2E_ARGS goes to bench_train_e2e.py (e.g. "--seqs 2048" to split the e2e rows
# over two calls: OUT_DIR outside the call's own output folder keeps the earlier rows).
set -o pipefail
out=$1; shift
phases=${1:-check,step,e2e,step_dropout}; [ $# -gt 0 ] && shift
mkdir -p /tmp/site "$out" && tar -xJf .whl/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
model=/tmp/llama2_7b_random
day=$(date +%F)
has() { [[ ",$phases," == *",$1,"* ]]; }
stamp() { echo "== $(date +%T) $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers, peft, bitsandbytes; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "bnb", bitsandbytes.__version__)'
if has check; then
  stamp check; python3 benchmarks/check_kernels_gpu.py 2>&1 | tee "$out/kernel_check.txt"
fi
if has step; then
  stamp step; python3 benchmarks/bench_one_gpu.py --out "$out" --model-dir $model --systems unsloth,xft \
    --longest '' "$@"
fi
if has e2e; then
  stamp e2e; python3 benchmarks/bench_train_e2e.py --out "$out" --model-dir $model \
    --step-jsonl "$out/gpu_$day.jsonl" ${DATA:+--data "$DATA"} $E2E_ARGS
fi
if has step_dropout; then
  stamp step_dropout; python3 benchmarks/bench_one_gpu.py --out "$out" --model-dir $model --systems xft \
    --longest '' --lora-dropout 0.1 "$@"
fi
stamp table; python3 benchmarks/bench_train_e2e.py --summarize --out "$out" --step-jsonl "$out/gpu_$day.jsonl"
stamp done
