# Two commands on a fresh machine: `make sweep` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: setup sweep confirm train test test-fast mutation lint bench bench-scale bench-scale-32 gpu-check report clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install when the project's dependencies change. constraints.txt pins the tested releases
# (torch==2.14.1 and torchvision==0.29.1 among them, which this workplace's pip takes from its local
# disk; uv or poetry would download gigabytes); pyproject.toml holds only ranges.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,lint,mutation,dashboard,export]'
	touch $(STAMP)

setup: $(STAMP)

# The main job: a 30-trial ResNet-50 study on ./data (or the embedded demo set). Rerun to resume.
sweep: setup
	$(VENV)/bin/cvstudy sweep --model resnet50 --trials 30

# The sweep's 3 best configurations (and its baseline) retrained with 5 fresh seeds each. Rerun to resume.
confirm: setup
	$(VENV)/bin/cvstudy confirm resnet50 --top 3 --seeds 5

train: setup
	$(VENV)/bin/cvstudy train --model resnet50 --epochs 15

report: setup
	$(VENV)/bin/cvstudy report

# One pytest worker per core plus one (pytest-xdist): many tests spend part of their time waiting on a
# server, a scheduler or a store's timeout, and the extra worker computes meanwhile. Tests are handed out
# longest first (tests/conftest.py) to whichever worker is free, two queued per worker at most, so the
# run does not end on one long test. Every test owns its directories, databases and ports.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
test: setup
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist load --maxschedchunk 2

# The developer's loop (about 90 s on 2 cores): every test but those marked slow (processes,
# servers, browsers, SLURM, command-line sweeps); every numeric oracle is in it.
test-fast: setup
	$(PY) -m pytest -q -ra -n auto --dist worksteal -m "not slow"

# Mutation testing (mutmut) of the modules that compute what users read, against the fast tests; the
# score per module goes to bench/RESULTS.md. Survivors: `mutmut results`, then `mutmut show NAME`, run in
# build/mutation/ (where bench/mutation.py lays the packages out as they install).
mutation: setup
	$(PY) bench/mutation.py

# The field's checks: ruff (lint and format), mypy, the import-linter contracts (layers, and no Optuna or
# MLflow in trainers/), and bandit (findings fixed or justified inline with # nosec and a reason).
# mypy and import-linter find a package by its folder's name; the folders install as cvstudy.<folder>
# (pyproject.toml's package-dir), so both read them through build/layout/cvstudy/, links named as the
# packages import.
LAYOUT := build/layout/cvstudy
lint: setup
	$(VENV)/bin/ruff check cvstudy orchestrator trainers studies tests bench
	$(VENV)/bin/ruff format --check cvstudy orchestrator trainers studies tests bench
	rm -rf $(LAYOUT) && mkdir -p $(LAYOUT)
	for f in __init__.py py.typed; do ln -s ../../../cvstudy/$$f $(LAYOUT)/$$f; done
	for d in orchestrator trainers studies; do ln -s ../../../$$d $(LAYOUT)/$$d; done
	cd $(dir $(LAYOUT)) && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml
	cd $(dir $(LAYOUT)) && ../../$(VENV)/bin/lint-imports --config ../../pyproject.toml
	$(VENV)/bin/bandit -q -c pyproject.toml -r cvstudy orchestrator trainers studies

bench: setup
	$(PY) bench/pipeline.py
	$(PY) bench/step.py
	$(PY) bench/overhead.py
	$(PY) bench/states.py
	$(PY) bench/cost.py
	$(PY) bench/intervals.py

# How cost grows with the work (bench/scale.py), one JSON line per figure, under 30 minutes on 2 cores: 1,
# 4 and 16 workers on the journal and PostgreSQL (from CVSTUDY_TEST_POSTGRES_URL, as .ci/run starts it)
# and 1 and 4 on SQLite, with MLflow on SQLite, 4 behind an MLflow server; `cvstudy report` on 30, 300
# and 3,000 trials and five studies side by side; loading large data; one worker's memory over 50 trials.
bench-scale: setup
	$(PY) bench/scale.py workers --counts 1 4 16 --storages journal postgresql --trackers sqlite
	$(PY) bench/scale.py workers --counts 1 4 --storages sqlite --trackers sqlite
	$(PY) bench/scale.py workers --counts 4 --storages journal postgresql --trackers server
	$(PY) bench/scale.py studies data worker

# Many workers: 16 on SQLite, 16 on the journal and PostgreSQL behind an MLflow server, 32 on those two
# with MLflow on SQLite and behind a server (about 35 minutes on 2 cores, where 32 interpreters importing
# torch take three of them).
bench-scale-32: setup
	$(PY) bench/scale.py workers --counts 16 --storages sqlite --trackers sqlite
	$(PY) bench/scale.py workers --counts 16 --storages journal postgresql --trackers server
	$(PY) bench/scale.py workers --counts 32 --storages journal postgresql

# On a machine with a GPU: the CUDA tests, throughput (bench/gpu.py) and a demo sweep at 1, 2 and 4 trials
# per device, one JSON line per figure in bench/results.jsonl. Refuses in one line without CUDA.
gpu-check: setup
	$(PY) bench/gpu_check.py

clean:
	rm -rf $(VENV) mlflow.db optuna.db optuna.db.lock mlruns/* reports build
