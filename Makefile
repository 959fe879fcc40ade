# `make setup`: the one set-up command. Idempotent: re-running with nothing changed takes seconds.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.sha256

.PHONY: setup test
setup: $(STAMP) data/glue/SST-2/dev.tsv data/fashion-mnist/t10k-labels-idx1-ubyte.gz

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	sha256sum requirements.txt pyproject.toml > $(STAMP)

data/glue/SST-2/dev.tsv: data/glue.dvc | $(STAMP)
	$(VENV)/bin/dvc pull data/glue

data/fashion-mnist/t10k-labels-idx1-ubyte.gz: data/fashion-mnist.dvc | $(STAMP)
	$(VENV)/bin/dvc pull data/fashion-mnist

test: setup
	$(VENV)/bin/pytest
