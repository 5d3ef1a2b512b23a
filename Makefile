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
	$(PY) -m pytest -q -n auto --dist worksteal

demo: $(STAMP)
	rm -rf $(DEMO)
	$(VENV)/bin/ingest make-demo --layout ffpp --identities 16 --out $(DEMO)/ffpp
	$(VENV)/bin/ingest make-demo --layout celebdf --identities 8 --out $(DEMO)/celebdf
	$(VENV)/bin/ingest scan --data-root $(DEMO)/ffpp
	$(VENV)/bin/ingest build-cache --data-root $(DEMO)/ffpp --out $(DEMO)/ffpp.zarr --frames 32
	$(VENV)/bin/ingest build-cache --data-root $(DEMO)/celebdf --out $(DEMO)/celebdf.zarr --frames 32
	$(VENV)/bin/cache info $(DEMO)/ffpp.zarr
	$(PY) train/run.py --cache $(DEMO)/ffpp.zarr --model all --clip-frames 16 --out $(DEMO)/run-squash --epochs 8 \
		--frame-size 64
	$(PY) -m train.features $(DEMO)/ffpp.zarr --backbone resnet18 --frame-size 64
	$(PY) train/run.py --cache $(DEMO)/ffpp.zarr --model resnet18 --clip-frames 16 --out $(DEMO)/run-features \
		--epochs 8 --from-features
	$(PY) -m train.predict --run $(DEMO)/run-squash/simple_cnn --csv $(DEMO)/predictions.csv \
		$(DEMO)/celebdf/Celeb-real/id0_0000.mp4 $(DEMO)/celebdf/Celeb-synthesis/id0_id1_0000.mp4
	$(PY) -m train.explain --run $(DEMO)/run-squash/simple_cnn --video $(DEMO)/celebdf/Celeb-synthesis/id0_id1_0000.mp4 \
		--out $(DEMO)/explain
	$(VENV)/bin/ingest build-cache --data-root $(DEMO)/ffpp --out $(DEMO)/faces.zarr --frames 32 --resize face
	$(VENV)/bin/cache show $(DEMO)/ffpp.zarr $(DEMO)/faces.zarr --row 0 --out $(DEMO)/before-after.png
	$(PY) train/run.py --cache $(DEMO)/faces.zarr --model simple_cnn --clip-frames 16 --out $(DEMO)/run-face --epochs 8 \
		--frame-size 64
	$(PY) -m train.report $(DEMO)/run-squash $(DEMO)/run-face
	$(PY) -m train.explain --run $(DEMO)/run-face/simple_cnn --video $(DEMO)/celebdf/Celeb-synthesis/id0_id1_0000.mp4 \
		--out $(DEMO)/explain-face
	$(PY) -m train.evaluate --run $(DEMO)/run-squash --cache $(DEMO)/ffpp.zarr $(DEMO)/celebdf.zarr
	@echo "demo: the three models trained on FaceForensics++-shaped videos (32 stored frames, 16-frame clips) in"
	@echo "      $(DEMO)/run-squash/ (comparison.md, */metrics.json, */curves.png), scored above on FF++'s test split"
	@echo "      and on a Celeb-DF-shaped set they never saw ($(DEMO)/run-squash/cross_dataset.{md,png});"
	@echo "      resnet18 trained on cached features in $(DEMO)/run-features/; predictions of two Celeb-DF videos in"
	@echo "      $(DEMO)/predictions.csv; Grad-CAM in $(DEMO)/explain/; simple_cnn on face crops in $(DEMO)/run-face/"
	@echo "      (side by side above); a video squashed and face-cropped in $(DEMO)/before-after.png"
	@echo "look at the run, its mistakes and a video of your own on a page (http://127.0.0.1:8000/, Ctrl-C ends it):"
	@echo "      $(PY) -m train.review --run $(DEMO)/run-squash --cache $(DEMO)/ffpp.zarr $(DEMO)/celebdf.zarr"

bench: $(STAMP)
	$(PY) -m bench run --demo --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(DEMO)
