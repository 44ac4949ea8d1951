# The two commands of the README: `make demo` and `make test`. Both create .venv with the
# pinned, tested versions (requirements.lock) on first use, then reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmlora-installed
TEST_STAMP := $(VENV)/.mmlora-test-installed
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast bench clean browser gpu-check gpu-check-dry-run

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Test-only extras (torchvision for the real-processor peers), without their dependencies, into a
# folder of the venv that is not on sys.path: this torchvision imports only once
# tests/torchvision_peer.py has defined its operators, so the venv itself (demo, bench baseline)
# must not see it.
$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/torchvision-peer -r requirements-test.txt
	touch $(TEST_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmlora demo

test: $(TEST_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/run.py --workload scan

clean:
	rm -rf $(VENV) runs *.egg-info

# Headless Chromium for the report.html screenshot test: Debian's package, installed when missing
# (needs root). In CI (.ci/run) a failure here fails the run; locally the test skips without it.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# The GPU check (bench/gpu_check.py, bench/README.md): `pytest -m gpu` and the GPU benchmark on one
# CUDA GPU under a time budget, writing bench/results/gpu.md. It makes its own venv (.venv-gpu,
# CUDA torch) with the system python3; GPU_CHECK_ARGS passes options (--wheels .whl offline,
# --steps tests to rerun one step, --budget 540). gpu-check-dry-run runs every step on CPU.
GPU_CHECK_ARGS ?=

gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-dry-run: $(STAMP)
	$(PY) bench/gpu_check.py --dry-run $(GPU_CHECK_ARGS)
