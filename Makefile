# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install, and serve the default checkpoint with a gallery
#   make test   create .venv, install, lint, and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch from this machine's disk here; elsewhere override, e.g. TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
GROCERY := ../shared/data/grocery
GALLERY_DIR ?= $(if $(wildcard $(GROCERY)/train),$(GROCERY)/train,data/snacks/train)
CHECKPOINT ?= models/checkpoints/default.pt

.PHONY: setup run test lint pytest snacks train evaluate export bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,lite,snacks]"
	touch $(STAMP)

run: $(STAMP)
	GALLERY_DIR=$(GALLERY_DIR) $(PY) -m app

test: lint pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile
	@if command -v docker-compose >/dev/null; then \
		docker-compose -f docker-compose.yml config -q && \
		docker-compose -f docker-compose.yml --profile gpu --profile train config -q && \
		echo "docker-compose config: ok (all profiles)"; \
	else echo "docker-compose not installed: compose check skipped"; fi

pytest: $(STAMP)
	$(PY) -m pytest

snacks: $(STAMP)
	$(PY) -m training.prepare_snacks --out data/snacks

train: $(STAMP)
	$(PY) -m training.train --data $(GROCERY) --out runs/encoder.pt

evaluate: $(STAMP)
	$(PY) -m training.evaluate --checkpoint $(CHECKPOINT) --data $(GROCERY)/test \
		--gallery $(GROCERY)/train --json runs/eval.json --grid docs/grid.jpg --plot docs/embeddings.png

export: $(STAMP)
	$(PY) -m training.export --checkpoint $(CHECKPOINT) --onnx runs/encoder.onnx

bench: $(STAMP)
	$(PY) -m bench.run --gallery $(GROCERY)/train --out bench/results.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
