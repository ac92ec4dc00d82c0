# Every target sets up its own environment: a fresh clone needs only Python 3.11 and make.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean-venv

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

## Train TOP-ReID on the embedded demo data, then evaluate all seven missing-spectrum settings.
demo: $(STAMP)
	$(PY) train_net.py --config_file configs/demo/TOP-ReID.yml OUTPUT_DIR logs/demo OVERWRITE True
	$(PY) test_net.py --config_file configs/demo/TOP-ReID.yml OUTPUT_DIR logs/demo/test TEST.WEIGHT logs/demo/best.pth TEST.MISS all

# Test processes (pytest-xdist; each test file stays in one process): one per core by default, JOBS=0 for one process.
JOBS   ?= auto
XDIST  := $(if $(filter 0,$(JOBS)),,-n $(JOBS) --dist loadfile)

## The test suite (what CI runs); the 15 slowest tests are listed at the end (--durations in pyproject.toml).
test: $(STAMP)
	$(PY) -m pytest -q $(XDIST)

## Everything but the tests marked slow (training runs, subprocesses, parity with the original, torch.compile).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(XDIST)

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean-venv:
	rm -rf $(VENV)
