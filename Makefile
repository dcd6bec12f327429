# Two commands on a fresh machine: `make sweep` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: setup sweep confirm train test bench report clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install when the project's dependencies change. torch==2.14.1 / torchvision==0.29.1 come from
# this workplace's local disk through pip (not uv or poetry, which would download gigabytes).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
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

test: setup
	$(PY) -m pytest -q -ra

bench: setup
	$(PY) bench/pipeline.py
	$(PY) bench/step.py
	$(PY) bench/overhead.py
	$(PY) bench/states.py

clean:
	rm -rf $(VENV) mlflow.db optuna.db optuna.db.lock mlruns/* reports
