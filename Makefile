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
	$(VENV)/bin/cache features $(DEMO)/cache.zarr --backbone resnet18 --frame-size 64
	$(PY) train/run.py --cache $(DEMO)/cache.zarr --model resnet18 --out $(DEMO)/run-features --epochs 8 --from-features
	$(PY) -m train.predict --run $(DEMO)/run/simple_cnn --csv $(DEMO)/predictions.csv \
		$(DEMO)/data/Celeb-real/id0_0000.mp4 $(DEMO)/data/Celeb-synthesis/id0_id1_0000.mp4
	$(PY) -m train.explain --run $(DEMO)/run/simple_cnn --video $(DEMO)/data/Celeb-synthesis/id0_id1_0000.mp4 \
		--out $(DEMO)/explain
	$(VENV)/bin/ingest build-cache --data-root $(DEMO)/data --out $(DEMO)/faces.zarr --resize face
	$(VENV)/bin/cache info $(DEMO)/faces.zarr
	$(VENV)/bin/cache show $(DEMO)/cache.zarr $(DEMO)/faces.zarr --row 0 --out $(DEMO)/before-after.png
	$(PY) train/run.py --cache $(DEMO)/faces.zarr --model all --out $(DEMO)/run-face --epochs 8 --frame-size 64
	$(PY) -m train.report $(DEMO)/run $(DEMO)/run-face
	$(PY) -m train.explain --run $(DEMO)/run-face/simple_cnn --video $(DEMO)/data/Celeb-synthesis/id0_id1_0000.mp4 \
		--out $(DEMO)/explain-face
	@echo "demo: models, metrics and plots in $(DEMO)/run/ (comparison.md, */metrics.json, */curves.png);"
	@echo "      resnet18 trained on cached features in $(DEMO)/run-features/; predictions in $(DEMO)/predictions.csv;"
	@echo "      Grad-CAM explanation in $(DEMO)/explain/; the same models on face crops in $(DEMO)/run-face/"
	@echo "      (side by side above), a video squashed and face-cropped in $(DEMO)/before-after.png"

bench: $(STAMP)
	$(PY) -m bench run --demo --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(DEMO)
