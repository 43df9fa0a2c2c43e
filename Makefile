# Set-up and everyday commands. Every target goes through the idempotent `install`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 5006

.PHONY: install serve test lint format bench bench-inference screenshots clean

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
	$(VENV)/bin/panel serve explorer --address 127.0.0.1 --port $(PORT) --allow-websocket-origin localhost:$(PORT) --allow-websocket-origin 127.0.0.1:$(PORT)

# OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads sleep instead of spinning while they wait; on
# 2 shared cores a spinning thread pool made torch 10-18x slower whenever another process ran.
test: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

# Speed (benchmarks/results/latest.json), then the field lab's end-to-end latency in Chromium
# (benchmarks/results/browser.json) where the Debian chromium is installed.
bench: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m benchmarks
	OMP_WAIT_POLICY=PASSIVE $(PY) -m benchmarks.emulators
	OMP_WAIT_POLICY=PASSIVE $(PY) -m benchmarks.cmb_sims
	@if [ -x /usr/bin/chromium ]; then $(PY) -m benchmarks.browser; \
	else echo "/usr/bin/chromium is missing: browser benchmark skipped"; fi

# Accuracy and speed of the shipped models in assets/models (docs/results.md).
bench-inference: install
	$(PY) -m benchmarks.inference

# The precomputed comparison of the Compare page (assets/compare/README.md): every shipped model
# on every sample dataset, and the P(k) likelihood.
COMPARE_DATASETS := grf lognormal \
	"camels:assets/samples/camels/Maps_Mtot_Sample_LH_z=0.00.npy?delta=true" \
	"quijote:assets/samples/quijote/LH" \
	"des:assets/samples/des/kappa_nside64.fits?mask=assets/samples/des/mask_nside64.fits&omega_m=0.3&sigma8=0.8" \
	"folder:assets/samples/folder?box_size=100"

compare-samples: install
	rm -rf assets/compare/predictions && mkdir -p assets/compare
	$(PY) -m engine compare \
		--checkpoints $(shell grep -L '"task": "\(gan\|diffusion\)"' $(wildcard assets/models/*/config.json) | xargs -n1 dirname | sort) \
		--datasets $(COMPARE_DATASETS) --count 64 \
		--out assets/compare/table.csv --predictions-dir assets/compare/predictions --overwrite

screenshots: install
	$(PY) -m pytest -q tests/test_browser.py --screenshots

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
