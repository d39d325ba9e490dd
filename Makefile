# The README's commands. Each creates .venv when it is missing, installs torch (TORCH=..., default the CPU build),
# the test and demo dependencies and the extension, then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
DEPS := ninja pybind11 pytest numpy scipy matplotlib tqdm scikit-learn kornia onnx onnxscript onnxruntime \
        opencv-python-headless PyWavelets
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/bank_plan/*.cpp csrc/bank_plan/*.h csrc/cpu/*.cpp csrc/cpu/*.h \
           csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.h)

.PHONY: demo test bench bench-quick build clean

demo: $(VENV)/.built
	$(PY) examples/demo.py

test: $(VENV)/.built
	$(PY) -m pytest -q

# Every study's full preset into the committed results (each under about 5 minutes on 2 quiet cores), then the
# docs' tables from them.
bench: $(VENV)/.built
	$(PY) -m benchmarks suite --preset full --out benchmarks/results
	$(PY) -m benchmarks banks --preset full --warm-malloc --out benchmarks/results
	$(PY) -m benchmarks options --preset full --warm-malloc --out benchmarks/results
	$(PY) -m benchmarks blocks --preset full --warm-malloc --out benchmarks/results
	$(PY) -m benchmarks wavelets --preset full --warm-malloc --out benchmarks/results
	$(PY) -m benchmarks overhead --preset full --out benchmarks/results
	$(PY) -m benchmarks allocation --preset full --out benchmarks/results
	$(PY) -m benchmarks allocation --preset full --warm-malloc --out benchmarks/results
	$(PY) -m benchmarks docs

# Every study on its quick preset, into bench-out/ (ignored by git).
bench-quick: $(VENV)/.built
	for study in $$($(PY) -c "from benchmarks.studies import STUDIES; print(*STUDIES)"); do \
		$(PY) -m benchmarks $$study || exit 1; done

build: $(VENV)/.built

# The installed pins, one stamp per set: a stamp whose name encodes $(TORCH) and $(DEPS), so that
# `make TORCH=torch==2.14.1 test` (or a changed DEPS) finds no stamp, reinstalls and rebuilds the extension against
# the new torch. The stamp also holds the pins as text.
PINS := $(TORCH) $(DEPS)
PINS_ID := $(shell printf '%s' '$(PINS)' | cksum | cut -d' ' -f1)
DEPS_STAMP := $(VENV)/.deps-$(PINS_ID)

$(DEPS_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q "$(TORCH)" $(DEPS)
	rm -f $(VENV)/.deps-*
	printf '%s\n' '$(PINS)' > $@

$(VENV)/.built: $(DEPS_STAMP) $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

clean:
	rm -rf build *.egg-info fixedbranch/_C*.so
