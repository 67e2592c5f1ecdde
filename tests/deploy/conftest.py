"""The `compose` marker: tests that build the images and run containers on a real Docker engine (minutes each).

They run only when selected (`make test-compose`, i.e. `pytest -m compose`), so `make test` stays independent of a
Docker engine; selected without an engine, they fail rather than skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "compose: builds the Docker images and runs containers (make test-compose)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "compose" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="needs a Docker engine and minutes: run with `make test-compose`")
    for item in items:
        if item.get_closest_marker("compose"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def python_base_image() -> Iterator[str]:
    """deploy/base-image.sh's base image, made once for every `compose` test of the session (debootstrap: ~2 min)."""
    from tests.deploy.docker_harness import base_image, require_engine

    require_engine()
    with base_image() as name:
        yield name
