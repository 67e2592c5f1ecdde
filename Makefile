# Fresh machine: `make run` (the main job on the bundled sample; the core only, no PyTorch) and `make test`
# (everything: the service, the trainer and the test tools). `make test-fast` skips the tests marked slow.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/sample
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

# PyTorch is needed by the trainer (and so by `make test`), never by `make run`. Which build is your choice:
#   TORCH_VARIANT=cpu    (default) the CPU build, ~200 MB
#   TORCH_VARIANT=cu128  (or cu126, ...) the CUDA build for that CUDA version, several GB
# The pin carries the variant as its local version (torch==2.13.0+cpu). PyPI serves no such version, so pip can
# only take that exact build: from TORCH_INDEX, or from a wheel already in pip's find-links (PIP_FIND_LINKS),
# in which case no index is asked (machines that cannot reach download.pytorch.org keep the wheel there). A plain
# `torch==2.13.0` from PyPI would be the multi-GB CUDA build on Linux.
TORCH_VERSION ?= 2.13.0
TORCH_VARIANT ?= cpu
TORCH_SPEC := torch==$(TORCH_VERSION)+$(TORCH_VARIANT)
TORCH_LOCAL := $(wildcard $(addsuffix /torch-$(TORCH_VERSION)+$(TORCH_VARIANT)-*.whl,$(PIP_FIND_LINKS)))
TORCH_INDEX ?= $(if $(TORCH_LOCAL),,https://download.pytorch.org/whl/$(TORCH_VARIANT))

CORE := $(VENV)/.installed-core
FULL := $(VENV)/.installed-full

.PHONY: install install-core run test test-fast test-compose lint bench clean

$(CORE): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(FULL): $(CORE)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[dev,service,trainer]"
	touch $@

install-core: $(CORE)

install: $(FULL)

run: install-core
	$(BIN)/tokshard run --out $(OUT)

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# The Docker tests (marker `compose`, skipped by `make test`): build the images from this checkout, run
# docker-compose.yml (encode job, API, a worker killed mid-encode) and `ray up`/`ray submit`/`ray down` with
# deploy/cluster-onprem.yaml on SSH containers. Needs a Docker engine, a BuildKit-capable client and the compose v2+
# plugin; without an image registry also root and debootstrap (deploy/base-image.sh). .ci/run installs all of it.
test-compose: install
	$(BIN)/python -m pytest -q -m compose tests/deploy/test_compose_cluster.py tests/deploy/test_ray_up.py

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python bench/encode_throughput.py

clean:
	rm -rf $(VENV) out .pytest_cache
