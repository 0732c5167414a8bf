# Two entry points: `make demo` and `make test`. Both create or refresh .venv from pyproject.toml and the pinned
# constraints.txt; nothing needs to be installed by hand.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/guard-reward demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PYTHON) -m pytest

bench: $(STAMP)
	$(PYTHON) -m benchmarks

clean:
	rm -rf $(VENV) .venv-trl112 .venv-verl091 .venv-openrlhf011 .venv-openrlhf011.partial runs .pytest_cache
