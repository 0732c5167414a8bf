# Two entry points: `make demo` and `make test`. Both create or refresh .venv from pyproject.toml and the pinned
# constraints.txt; nothing needs to be installed by hand.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-latest lint venv bench clean

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

# The newest releases of everything, without constraints.txt, in an environment of its own (not part of `make test`):
# a representative subset runs with every FutureWarning an error, but the two that TRL's own calls raise (as in
# pyproject.toml; -W on the command line outranks it).
LATEST := .venv-latest
LATEST_TESTS := tests/guards tests/rewards tests/shaping tests/test_layers.py tests/integrations/test_grpo.py \
	tests/integrations/test_ppo.py tests/evaluation/test_runner.py
test-latest:
	test -x $(LATEST)/bin/python || python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST)/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|transformers|trl|accelerate) '
	$(LATEST)/bin/python -m pytest -p no:cacheprovider -m "not slow" $(LATEST_TESTS) \
		-W error::FutureWarning -W 'ignore:`is_gradient_checkpointing` is deprecated:FutureWarning' \
		-W 'ignore:`gradient_checkpointing` is deprecated:FutureWarning'

bench: $(STAMP)
	$(PYTHON) -m benchmarks

clean:
	rm -rf $(VENV) $(LATEST) .venv-trl112 .venv-verl091 .venv-openrlhf011 .venv-openrlhf011.partial runs .pytest_cache
	rm -rf .venv-vllm032 .venv-vllm032.partial .venv-vllm032.lock .venv-vllm032.build.log
