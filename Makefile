VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO ?= demo

.PHONY: install test demo bench lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	rm -rf $(DEMO)
	$(VENV)/bin/ingest make-demo --out $(DEMO)/data
	$(VENV)/bin/ingest build-cache --data-root $(DEMO)/data --out $(DEMO)/cache.zarr
	$(VENV)/bin/cache info $(DEMO)/cache.zarr
	$(PY) train/run.py --cache $(DEMO)/cache.zarr --model all --out $(DEMO)/run --epochs 8 --frame-size 64
	@echo "demo: models, metrics and plots in $(DEMO)/run/ (comparison.md, */metrics.json, */curves.png)"

bench: $(STAMP)
	$(PY) -m bench run --demo --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(DEMO)
