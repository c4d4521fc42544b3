# Two commands: `make train` (the demo, end to end) and `make test` (the suite).
# Both create .venv and install mgc when missing; nothing else needs to be set up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: train test setup clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PY) jobs/train.py

test: $(STAMP)
	$(PY) -m pytest -ra --durations=15

clean:
	rm -rf $(VENV) runs .pytest_cache
