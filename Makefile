# Set-up and everyday commands. Every target goes through the idempotent `install`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 5006

.PHONY: install serve test lint format bench screenshots clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch is pinned here (not in pyproject) so pip takes the CPU wheel on this machine's disk;
# on a CUDA machine install your CUDA build of torch first and `make install` keeps it.
$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(VENV)/bin/panel serve explorer --address localhost --port $(PORT) --allow-websocket-origin localhost:$(PORT)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m benchmarks

screenshots: install
	$(PY) -m pytest -q tests/test_browser.py --screenshots

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
