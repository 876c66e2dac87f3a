#!/bin/bash
# On the CPU machine, once before the ZeRO phases of run_multi_gpu.sh: the wheels those phases
# need that the GPU image lacks, into .whl/multi_gpu/ (ignored by git). Carry it beside the
# packed site: carry=['.whl/site.tar.xz', '.whl/multi_gpu'] (the unpacked .whl/site is too big).
# The image has einops, msgpack, ninja, py-cpuinfo, psutil and tqdm (device KINDS.md); it lacks
# deepspeed 0.18.9 (0.19 removed what mmengine 0.10.7 imports), hjson and pydantic 2.
# deepspeed is published as source only: its pure-Python wheel is built here with the venv's
# torch (no op is compiled: DeepSpeed builds ops when first used, and ZeRO with torch's AdamW
# uses none). About 6 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl/multi_gpu
mkdir -p $out
py=.venv/bin/python
$py -m pip wheel -q --no-deps --no-build-isolation -w $out deepspeed==0.18.9
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d $out hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
ls -la $out
