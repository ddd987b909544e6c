# Two commands do everything on a fresh clone: `make demo` and `make test`.
# Torch is installed first and pinned (override with TORCH_SPEC=...) so that pip never
# replaces the local CPU build with several GB of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.hin-installed

.PHONY: install test browser demo clean gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP) browser
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q

# The `hin serve` browser test drives Debian's chromium + chromium-driver; install them when
# missing (as root), else that one test skips and says why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "chromium/chromedriver missing and not root: the browser test will be skipped"; fi

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

demo: $(STAMP)
	$(BIN)/hin demo

# Every CUDA path in one run (about 8 minutes on one H200), from the source tree: needs only
# python3 with torch, numpy, h5py, pyyaml, tqdm and pillow; no venv, no downloads.
# `make gpu-check GPU_CHECK_ARGS="--device cpu --quick"` runs the same paths small on a CPU.
GPU_CHECK_OUT ?= gpu-check
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=src $(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)
