# merchant-meta: the two commands of the README's quick start.
#   make simulate   set up .venv if missing, run the local Flower simulation
#   make test       set up .venv if missing, lint, type check, run the whole suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup simulate test lint typecheck browser benchmark clean

setup: $(STAMP)

# torch first, pinned to the CPU wheel: anything else would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

simulate: $(STAMP)
	$(PY) -m simulations.simulate $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The dashboard's browser test drives Debian's Chromium (CI runs as root).
browser:
	test -x /usr/bin/chromium || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

benchmark: $(STAMP)
	$(PY) -m simulations.benchmark --data ../shared/data/xmarket --format xmarket \
		--leave-one-market-out --shots all,3,1 --seeds 3 --engine inprocess \
		--out docs/benchmark/benchmark.json --report docs/benchmark

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
