# The README's commands. Each creates .venv when it is missing, installs torch (TORCH=..., default the CPU build),
# the test and demo dependencies and the extension, then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
DEPS := ninja pybind11 pytest numpy scipy matplotlib tqdm scikit-learn kornia onnx onnxscript onnxruntime \
        opencv-python-headless
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)

.PHONY: demo test bench bench-quick build clean

demo: $(VENV)/.built
	$(PY) examples/demo.py

test: $(VENV)/.built
	$(PY) -m pytest -q

# Every study's full preset into the committed results (about 25 minutes on 2 cores), then the docs' tables from them.
bench: $(VENV)/.built
	$(PY) -m benchmarks suite --preset full --out benchmarks/results
	$(PY) -m benchmarks banks --preset full --warm-malloc --out benchmarks/results
	$(PY) -m benchmarks options --preset full --warm-malloc --out benchmarks/results
	$(PY) -m benchmarks overhead --preset full --out benchmarks/results
	$(PY) -m benchmarks allocation --preset full --out benchmarks/results
	$(PY) -m benchmarks allocation --preset full --warm-malloc --out benchmarks/results
	$(PY) -m benchmarks docs

# Every study on its quick preset, into bench-out/ (ignored by git).
bench-quick: $(VENV)/.built
	for study in suite banks options overhead allocation; do $(PY) -m benchmarks $$study || exit 1; done

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
