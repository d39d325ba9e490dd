# The README's commands. Each creates .venv when it is missing, installs torch (TORCH=..., default the CPU build),
# the test and demo dependencies and the extension, then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
DEPS := ninja pybind11 pytest numpy scipy matplotlib tqdm scikit-learn kornia onnx onnxscript onnxruntime \
        opencv-python-headless PyWavelets
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)

.PHONY: demo test bench bench-quick build clean

demo: $(VENV)/.built
	$(PY) examples/demo.py

test: $(VENV)/.built
	$(PY) -m pytest -q

bench: $(VENV)/.built
	$(PY) -m benchmarks --preset full

bench-quick: $(VENV)/.built
	$(PY) -m benchmarks --preset quick

build: $(VENV)/.built

$(VENV)/.deps: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q "$(TORCH)" $(DEPS)
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

clean:
	rm -rf build *.egg-info fixedbranch/_C*.so
