#!/usr/bin/env bash
# Runs the whole suite offline on one thread per process. Exits non-zero on any failure
# and also when no test ran (pytest's exit 5), so an empty run can never pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# DeepSpeed probes for an accelerator at import and says so on every run; CI has none.
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
# One worker per core; tests are single-threaded.
.venv/bin/python -m pytest tests -q -ra --durations=20 -n "${XFT_TEST_WORKERS:-2}" "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "CI: pytest collected no tests; failing." >&2
  exit 1
fi
exit "$status"
