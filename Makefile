# Two commands for a fresh machine: `make run` (the main job on the bundled sample) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/sample
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install run test test-compose lint bench clean

$(BIN)/tokshard: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build on disk; an open range would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,service,trainer]"
	touch $@

install: $(BIN)/tokshard

run: install
	$(BIN)/tokshard run --out $(OUT)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The Docker tests (marker `compose`, skipped by `make test`): build the images from this checkout, run
# docker-compose.yml (encode job, API, a worker killed mid-encode) and `ray up`/`ray submit`/`ray down` with
# deploy/cluster-onprem.yaml on SSH containers. Needs a Docker engine, a BuildKit-capable client and the compose v2+
# plugin; without an image registry also root and debootstrap (deploy/base-image.sh). .ci/run installs all of it.
test-compose: install
	$(BIN)/python -m pytest -q -m compose tests/deploy/test_compose_cluster.py tests/deploy/test_ray_up.py

bench: install
	$(BIN)/python bench/encode_throughput.py

clean:
	rm -rf $(VENV) out .pytest_cache
