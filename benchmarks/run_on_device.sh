#!/bin/bash
# On the GPU machine: unpack the carried packages (.whl/site.tar.xz: unsloth, bitsandbytes,
# mmengine, datasets<5 and their pure-Python needs), check the kernels, run the benchmark.
#   bash benchmarks/run_on_device.sh OUT_DIR [bench_one_gpu.py options...]
set -o pipefail
out=$1; shift
mkdir -p /tmp/site "$out" && tar -xJf .whl/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers, peft, bitsandbytes; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "bnb", bitsandbytes.__version__)'
python3 benchmarks/check_kernels_gpu.py 2>&1 | tee "$out/kernel_check.txt"
python3 benchmarks/bench_one_gpu.py --out "$out" "$@"
