"""A real Docker engine for the deploy tests marked `compose`: the images deploy/ builds, and compose projects that
remove themselves (containers, networks, volumes) whatever the test's outcome.

Every name a test creates carries one run id (`tokshard-test-<hex>`), so a test only ever removes what it made and
two runs on one engine never meet. The client must build with BuildKit (`RUN --mount`): `DOCKER` names it, else the
first of `docker` and Debian's /usr/bin/docker that can (Docker >= 23 needs the buildx plugin for BuildKit; older
clients, like Debian bookworm's docker.io 20.10, have it built in with DOCKER_BUILDKIT=1, which is set here).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.local_cluster import wait_for

REPO = Path(__file__).resolve().parents[2]


def buildkit_client() -> str:
    """The first Docker client that builds with BuildKit; `docker` if none does (the build then says why)."""
    for client in ("docker", "/usr/bin/docker"):
        if not shutil.which(client):
            continue
        version = subprocess.run([client, "version", "--format", "{{.Client.Version}}"], capture_output=True,
                                 text=True).stdout.strip()
        has_buildx = subprocess.run([client, "buildx", "version"], capture_output=True).returncode == 0
        if has_buildx or (version[:2].isdigit() and int(version.split(".")[0]) < 23):
            return client
    return "docker"


DOCKER = os.environ.get("DOCKER") or buildkit_client()
RUN_ID = f"tokshard-test-{secrets.token_hex(4)}"
KEEP_IMAGES = os.environ.get("TOKSHARD_TEST_KEEP_IMAGES") == "1"  # reuse images between runs while developing


def docker(*args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None,
           **kwargs) -> subprocess.CompletedProcess:
    """`docker ARGS`; with check, a failure raises with the command's output (the engine says what went wrong)."""
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DOCKER_BUILDKIT": "1", **(env or {})}, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def require_engine() -> None:
    """Selected with `-m compose`, the tests fail (never skip) when there is no engine to run them on."""
    proc = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=60)
    assert proc.returncode == 0, (f"no Docker engine answers `{DOCKER} version` ({proc.stderr.strip()}): start "
                                  "dockerd (as .ci/run does) or run without `-m compose`")


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 1.0) -> object:
    """local_cluster.wait_for, polling once a second by default (containers are slow to change)."""
    return wait_for(condition, timeout, what, interval)


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False, timeout=60).returncode == 0


@contextlib.contextmanager
def base_image() -> Iterator[str]:
    """deploy/base-image.sh's image: the registry's python:3.11, or one made from Debian packages. Removed at the end
    if this run made it (its build-cache layers then go with the images built on it)."""
    before = docker("image", "ls", "-q", "--no-trunc", check=False).stdout.split()
    proc = subprocess.run([str(REPO / "deploy" / "base-image.sh")], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "DOCKER": DOCKER})
    assert proc.returncode == 0, f"deploy/base-image.sh failed:\n{proc.stderr[-4000:]}"
    name = proc.stdout.strip().splitlines()[-1]
    made_here = docker("image", "inspect", "-f", "{{.Id}}", name).stdout.strip() not in before
    try:
        yield name
    finally:
        if made_here and not KEEP_IMAGES:
            docker("image", "rm", name, check=False)


def build_secret_args() -> list[str]:
    """The host's CA bundle for pip inside the build (networks that intercept TLS), as a BuildKit secret."""
    cert = os.environ.get("PIP_CERT")
    return ["--secret", f"id=pip_cert,src={cert}"] if cert and Path(cert).is_file() else []


@contextlib.contextmanager
def built_image(target: str, base: str, dockerfile: Path = REPO / "deploy" / "Dockerfile",
                context: Path = REPO, build_args: dict[str, str] | None = None) -> Iterator[str]:
    """`docker build` of a Dockerfile target on `base`, tagged with this run's id and removed at the end."""
    tag = f"{RUN_ID}:{target}"
    args = [f"--build-arg=PYTHON_IMAGE={base}", *(f"--build-arg={k}={v}" for k, v in (build_args or {}).items())]
    docker("build", "--progress=plain", "-f", str(dockerfile), "--target", target, *args, *build_secret_args(),
           "-t", tag, str(context), timeout=2400)
    try:
        yield tag
    finally:
        if not KEEP_IMAGES:
            docker("image", "rm", tag, check=False)


class ComposeProject:
    """`docker compose -p RUN_ID-NAME -f FILE` with a given environment only: the user's .env and RAY_/TOKSHARD_
    variables stay out. `down()` removes its containers, networks and volumes."""

    def __init__(self, compose_file: Path, name: str, env: dict[str, str], env_file: Path) -> None:
        self.file, self.name = compose_file, f"{RUN_ID}-{name}"
        env_file.write_text("")  # compose would otherwise read .env beside the compose file
        self.env_file = env_file
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TOKSHARD_"))}
        self.env = {**inherited, "DOCKER_BUILDKIT": "1", **env}

    def __call__(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        return docker("compose", "-f", str(self.file), "-p", self.name, "--env-file", str(self.env_file), *args,
                      check=check, timeout=timeout, env=self.env)

    def popen(self, *args: str, log: Path) -> subprocess.Popen:
        with log.open("wb") as sink:
            return subprocess.Popen([DOCKER, "compose", "-f", str(self.file), "-p", self.name, "--env-file",
                                     str(self.env_file), *args], env=self.env, stdout=sink,
                                    stderr=subprocess.STDOUT)

    def containers(self, service: str) -> list[str]:
        """Names of the service's running containers."""
        out = self("ps", "--format", "{{.Name}}", service).stdout
        return sorted(line for line in out.split() if line)

    def ps_all(self, service: str) -> list[dict]:
        """`ps -a --format json` of a service: one object per line (compose >= 2.21) or one JSON array (older)."""
        out = self("ps", "-a", "--format", "json", service).stdout.strip()
        if out.startswith("["):
            return json.loads(out)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "80", check=False, timeout=120).stdout

    def down(self) -> None:
        self("down", "-v", "--remove-orphans", "--timeout", "10", check=False, timeout=300)
        left = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}", check=False)
        assert not left.stdout.strip(), f"containers of {self.name} left after `down`: {left.stdout}"
