# Two entry points for a fresh machine (see README):
#   make serve   install, then serve the bundled model at http://127.0.0.1:8000
#   make test    install, then lint and run every test
#   make image   the container image of `imageclf serve` (Containerfile, docs/deploy.md)
PYTHON ?= python3
VENV ?= .venv
# Extras installed with the package; .ci/run passes every extra pyproject.toml declares.
EXTRAS ?= dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The container image: base image, tag, engine (podman, else docker), the wheel folder.
BASE ?= python:3.11-slim-bookworm
IMAGE ?= imageclf:latest
ENGINE ?= $(shell command -v podman || command -v docker)
WHEELS := dist/wheels

.PHONY: install serve test lint train-demo clean wheels image

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: a looser spec pulls the multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
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

# Every wheel the image installs (this project's and its runtime dependencies', CPU torch
# pinned), so the image builds without reaching a package index. Made by this venv's
# Python, which must be 3.11 on Linux x86-64 like the image's.
wheels: install
	$(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "make wheels needs Python 3.11, as in the image")'
	rm -rf $(WHEELS)
	$(BIN)/pip wheel -q --wheel-dir $(WHEELS) torch==2.13.0 .

# --format docker: the OCI format drops HEALTHCHECK (podman's default is OCI). Then the
# untagged images an earlier build of this Containerfile left (its build stage, the image
# the tag moved from: about 3 GB a rebuild) go; prune never touches a tagged image.
image: wheels
	$(if $(ENGINE),,$(error make image needs podman or docker (or ENGINE=...)))
	$(ENGINE) build $(if $(findstring podman,$(ENGINE)),--format docker) \
		--build-arg BASE=$(BASE) -t $(IMAGE) -f Containerfile .
	$(ENGINE) image prune --force --filter label=io.imageclf.stage

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
