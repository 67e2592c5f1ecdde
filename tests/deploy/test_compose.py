"""deploy/: the Docker image, docker-compose.yml and the Ray cluster launcher configs, checked without a Docker engine.

These checks need no engine (test_compose_cluster.py and test_ray_up.py run the real thing, marked `compose`): every
command a service or a node runs is parsed by the real parser of the program it names (tokshard's argparse, Ray's
click commands); ports, addresses, environment, volumes and healthchecks are cross-checked between services; the
Dockerfile's own requirement-extraction code runs against pyproject.toml; the cluster YAMLs go through Ray's own
preparation and schema validation; `docker compose config` runs when a compose v2 or newer binary is installed.
Then the compose topology runs as local processes, with the commands read from docker-compose.yml: a
token-authenticated Ray head and two workers (tests/local_cluster.py), the `encode` service's job submission, the
`api` service's `tokshard serve`, and every healthcheck run against them.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import http_json, sample_texts
from tests.local_cluster import LocalCluster, free_port, wait_for
from tokshard.pipeline.cli import build_parser
from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PACKAGE_FOLDERS = ("tokshard", "pipeline", "service", "trainer")  # what pyproject's package-dir installs
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
CLUSTER_CONFIGS = [REPO / "deploy" / "cluster-aws.yaml", REPO / "deploy" / "cluster-onprem.yaml"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RAY_SERVICES = ("ray-head", "ray-worker", "encode")  # the services that talk to Ray
LONG_RUNNING = ("ray-head", "ray-worker", "api")
ONE_SHOT = ("encode", "trainer")


# -- compose: interpolation, as `docker compose` does it ------------------------------------------------------
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}` and `$$`. A bare
    `${VAR}` is refused: every variable in our file must say its default or that it is required."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        current = env.get(name)
        assert op is not None, f"${{{name}}} has neither a default nor a required-variable message"
        unset = current is None or (op.startswith(":") and current == "")
        if op.endswith("?"):
            if unset:
                raise KeyError(f"{name}: {arg}")
            return current
        return arg if unset else current

    return _VARIABLE.sub(substitute, value)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate(raw, {"RAY_AUTH_TOKEN": "0" * 64, **(env or {})})


def argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: the image has no ENTRYPOINT (checked below), so entrypoint + command."""
    return [*service.get("entrypoint", []), *service.get("command", [])]


def option(args: list[str], name: str) -> str:
    """The value of `--name=V` or `--name V` in args."""
    for i, a in enumerate(args):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name:
            return args[i + 1]
    raise AssertionError(f"{name} not in {args}")


def byte_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", text.strip().lower())
    assert m, f"not a size: {text!r}"
    return int(m.group(1)) * 1024 ** " kmg".index(m.group(2) or " ")


# -- command parsers: the real ones ---------------------------------------------------------------------------
def parse_ray(args: list[str]):
    """Parse `ray ARGS` with Ray's own click commands (unknown subcommands or options raise); nothing runs."""
    import click
    from ray.scripts.scripts import cli

    command, name = cli, "ray"
    while isinstance(command, click.Group):
        assert args, f"`ray {name}` needs a subcommand"
        name, args = args[0], args[1:]
        command = command.get_command(click.Context(command), name)
        assert command is not None, f"`ray` has no subcommand {name!r}"
    try:
        return command.make_context(name, list(args))
    except click.UsageError as e:
        raise AssertionError(f"`ray {name} {shlex.join(args)}`: {e}") from None


def parse_tokshard(args: list[str]):
    try:
        return build_parser().parse_args(args)
    except SystemExit as e:
        if e.code == 0 and args == ["--help"]:  # the image's default CMD
            return None
        raise AssertionError(f"`tokshard {shlex.join(args)}` is not a valid tokshard command") from None


def check_command(args: list[str]) -> Any:
    """A container or node command must be one of the console scripts the image installs, with valid arguments."""
    program = Path(args[0]).name
    if program == "tokshard":
        return parse_tokshard(args[1:])
    if program == "ray":
        ctx = parse_ray(args[1:])
        if ctx.info_name == "submit" and "entrypoint" in ctx.params:  # `ray job submit -- ENTRYPOINT`
            check_command(list(ctx.params["entrypoint"]))
        return ctx
    raise AssertionError(f"{args[0]!r} is not a console script of the image (tokshard, ray)")


def test_console_scripts_are_what_the_image_installs():
    from importlib.metadata import distribution

    assert PYPROJECT["project"]["scripts"] == {"tokshard": "tokshard.pipeline.cli:main"}
    ray_scripts = {ep.name for ep in distribution("ray").entry_points if ep.group == "console_scripts"}
    assert "ray" in ray_scripts


# -- docker-compose.yml ---------------------------------------------------------------------------------------
def test_compose_services_run_real_commands():
    services = load_compose()["services"]
    assert set(services) == {"ray-head", "ray-worker", "encode", "api", "trainer"}
    for service in services.values():
        check_command(argv(service))
    head = parse_ray(argv(services["ray-head"])[1:]).params
    assert head["head"] and head["block"] and head["num_cpus"] == 0 and head["include_dashboard"]
    worker = parse_ray(argv(services["ray-worker"])[1:]).params
    assert worker["block"] and not worker["head"]
    submit = parse_ray(argv(services["encode"])[1:])
    assert submit.command_path.endswith("submit") and not submit.params.get("no_wait")  # exits with the job
    assert services["encode"]["command"][:2] == ["tokshard", "run"]
    serve = parse_tokshard(argv(services["api"])[1:])
    assert serve.command == "serve"
    train = parse_tokshard(argv(services["trainer"])[1:])
    assert train.command == "train" and train.device == "cuda"  # fail loudly, not train on the CPU


def test_compose_every_variable_has_a_default_and_the_token_is_required():
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    with pytest.raises(KeyError, match="RAY_AUTH_TOKEN"):
        interpolate(raw, {})
    assert interpolate(raw, {"RAY_AUTH_TOKEN": "t"})  # nothing else is required (a bare ${VAR} would assert)
    custom = load_compose({"RAY_WORKER_CPUS": "6", "RAY_WORKER_MEMORY": "12g", "TOKSHARD_TOKENIZER": "/outputs/x/tok"})
    worker = custom["services"]["ray-worker"]
    assert parse_ray(argv(worker)[1:]).params["num_cpus"] == 6
    assert worker["deploy"]["resources"]["limits"] == {"cpus": "6", "memory": "12g"}
    assert option(argv(custom["services"]["api"]), "--tokenizer") == "/outputs/x/tok"


def test_compose_ray_services_share_auth_and_address():
    services = load_compose({"RAY_AUTH_TOKEN": "s3cret"})["services"]
    envs = [services[name]["environment"] for name in RAY_SERVICES]
    assert all(env == envs[0] for env in envs), "Ray head, workers and job submitter must agree on auth"
    assert envs[0]["RAY_AUTH_MODE"] == "token" and envs[0]["RAY_AUTH_TOKEN"] == "s3cret"
    head = parse_ray(argv(services["ray-head"])[1:]).params
    assert parse_ray(argv(services["ray-worker"])[1:]).params["address"] == f"ray-head:{head['port']}"
    job_server = parse_ray(argv(services["encode"])[1:]).params["address"]
    assert job_server == f"http://ray-head:{head['dashboard_port']}"
    assert head["dashboard_host"] == "0.0.0.0"  # reachable from the encode container and the published port
    assert "RAY_AUTH_TOKEN" not in services["api"].get("environment", {})  # the API never talks to Ray


def test_compose_ports_are_published_on_loopback_only():
    services = load_compose()["services"]
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port!r} is not on loopback"
            _, host, container = port.split(":")
            published[name] = (int(host), int(container))
    head = parse_ray(argv(services["ray-head"])[1:]).params
    assert published == {"ray-head": (head["dashboard_port"],) * 2,
                         "api": (int(option(argv(services["api"]), "--port")),) * 2}
    assert option(argv(services["api"]), "--host") == "0.0.0.0"


def test_compose_healthchecks_probe_each_services_own_ports():
    services = load_compose()["services"]
    head = parse_ray(argv(services["ray-head"])[1:]).params
    agent = f"127.0.0.1:{head['dashboard_agent_listen_port']}"  # Ray's default, the same on every node
    expected = {
        "ray-head": [f"http://127.0.0.1:{head['dashboard_port']}/api/gcs_healthz",
                     f"http://{agent}/api/local_raylet_healthz"],
        "ray-worker": [f"http://{agent}/api/local_raylet_healthz"],
        "api": [f"http://127.0.0.1:{option(argv(services['api']), '--port')}/readyz"],
    }
    for name in LONG_RUNNING:
        check = services[name]["healthcheck"]
        test = check["test"]
        assert test[:3] == ["CMD", "python", "-c"], f"{name}: the probe runs the image's python"
        ast.parse(test[3])
        assert test[4:] == expected[name]
        assert check["retries"] >= 3 and "start_period" in check
        assert services[name]["restart"] == "unless-stopped"
    for name in ONE_SHOT:
        assert "healthcheck" not in services[name] and services[name]["restart"] == "no"


def test_compose_start_order():
    services = load_compose()["services"]
    assert services["ray-worker"]["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    assert services["encode"]["depends_on"] == {"ray-head": {"condition": "service_healthy"},
                                                "ray-worker": {"condition": "service_healthy"}}
    for name in ("api", "trainer"):
        assert services[name]["depends_on"] == {"encode": {"condition": "service_completed_successfully"}}


def test_compose_volumes_resources_and_gpu_profile():
    spec = load_compose()
    services = spec["services"]
    mounts = {name: {m.split(":")[1]: m for m in s.get("volumes", [])} for name, s in services.items()}
    for name in ("ray-head", "ray-worker"):
        # The driver (head) and the encode tasks (workers) must see the same source and output directories.
        assert mounts[name] == mounts["ray-head"]
        assert mounts[name]["/outputs"] == "outputs:/outputs" and mounts[name]["/data"].endswith(":/data:ro")
    assert mounts["api"] == {"/outputs": "outputs:/outputs:ro"}
    assert mounts["trainer"] == {"/outputs": "outputs:/outputs"}
    assert set(spec["volumes"]) == {"outputs"}
    # Paths the commands use lie inside a mount of the services that touch them.
    out = option(argv(services["encode"]), "--out")
    assert out.startswith("/outputs/") and option(argv(services["api"]), "--tokenizer") == f"{out}/tokenizer"
    assert option(argv(services["trainer"]), "--data") == out

    for name in ("ray-head", "ray-worker"):
        params = parse_ray(argv(services[name])[1:]).params
        assert byte_size(services[name]["shm_size"]) > params["object_store_memory"], f"{name}: /dev/shm too small"
        assert services[name]["init"] is True
    worker = services["ray-worker"]
    assert float(worker["deploy"]["resources"]["limits"]["cpus"]) == parse_ray(argv(worker)[1:]).params["num_cpus"]
    assert worker["deploy"]["replicas"] >= 2

    trainer = services["trainer"]
    assert trainer["profiles"] == ["gpu"] and all("profiles" not in s for n, s in services.items() if n != "trainer")
    assert trainer["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    stages = {s.name for s in dockerfile_stages()}
    for name, service in services.items():
        build = service["build"]
        assert build["dockerfile"] == "deploy/Dockerfile" and build["context"] == "."
        assert build["target"] == ("trainer" if name == "trainer" else "runtime") and build["target"] in stages
        assert service["image"] == ("tokshard:gpu" if name == "trainer" else "tokshard:latest")


def _compose_binary() -> list[str] | None:
    """`docker compose` (the plugin) or a standalone `docker-compose`, v2 or newer, if this machine has one (v1, the
    Python `docker-compose`, reads the file differently)."""
    candidates = [["docker", "compose"], ["docker-compose"], [str(BIN / "docker-compose")]]
    for candidate in candidates:
        if shutil.which(candidate[0]) or Path(candidate[0]).is_file():
            try:
                proc = subprocess.run([*candidate, "version"], capture_output=True, text=True, timeout=30)
            except OSError:
                continue
            m = re.search(r"version v?(\d+)\.", proc.stdout)
            if proc.returncode == 0 and m and int(m.group(1)) >= 2:
                return candidate
    return None


def test_docker_compose_config_accepts_the_file():
    compose = _compose_binary()
    if compose is None:
        pytest.skip("no `docker compose` v2+ here; the file is checked by the other tests")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TOKSHARD_"))}
    for profile in ([], ["--profile", "gpu"]):
        proc = subprocess.run([*compose, "-f", str(COMPOSE_FILE), *profile, "config", "--format", "json"],
                              env={**env, "RAY_AUTH_TOKEN": "t"}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert set(json.loads(proc.stdout)["services"]) == {"ray-head", "ray-worker", "encode", "api",
                                                            *(["trainer"] if profile else [])}
    proc = subprocess.run([*compose, "-f", str(COMPOSE_FILE), "config", "--quiet"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "RAY_AUTH_TOKEN" in proc.stderr


# -- deploy/Dockerfile ----------------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped, as Docker reads them."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    return out


def dockerfile_stages() -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert m, f"FROM {rest}: every stage is named"
            base = re.sub(r"\$\{(\w+)\}", lambda v: args[v.group(1)], m.group(1))
            stages.append(Stage(m.group(2), base))
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def stage_chain(name: str) -> list[Stage]:
    """The stage and its ancestors (stages built FROM other stages), root first."""
    by_name = {s.name: s for s in dockerfile_stages()}
    chain = [by_name[name]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def run_words(rest: str) -> list[str]:
    """A RUN's shell words, without BuildKit's `--mount=...` flags."""
    words = shlex.split(rest)
    while words and words[0].startswith("--"):
        words.pop(0)
    return words


def python_snippets(stage: Stage) -> list[tuple[str, list[str]]]:
    """(code, arguments) of each `python -c CODE ARGS...` in the stage's RUN instructions."""
    found = []
    for keyword, rest in stage.instructions:
        if keyword == "RUN":
            words = run_words(rest)
            for i in range(len(words) - 2):
                if words[i] == "python" and words[i + 1] == "-c":
                    tail = words[i + 3:]
                    args = tail[:next((j for j, w in enumerate(tail) if w in (">", "&&", "|")), len(tail))]
                    found.append((words[i + 2], args))
    return found


def build_args(stage: Stage) -> dict[str, str]:
    return dict(rest.partition("=")[::2] for keyword, rest in stage.instructions if keyword == "ARG")


def test_dockerfile_base_user_and_command():
    stages = dockerfile_stages()
    assert stages[0].name == "deps" and stages[0].base.startswith("python:3.11-slim")
    assert stages[-1].name == "runtime", "a plain `docker build` must give the default image"
    for target in ("runtime", "trainer"):
        instructions = [i for s in stage_chain(target) for i in s.instructions]
        users = [rest for keyword, rest in instructions if keyword == "USER"]
        assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:"), f"{target} runs as root"
        assert any(keyword == "RUN" and "useradd" in rest and users[-1] in rest for keyword, rest in instructions)
        assert not any(keyword == "ENTRYPOINT" for keyword, _ in instructions), "compose commands are full argv"
        cmd = json.loads(next(rest for keyword, rest in reversed(instructions) if keyword == "CMD"))
        check_command(cmd)
        runs = [rest for keyword, rest in instructions if keyword == "RUN"]
        installs = [i for i, rest in enumerate(runs) if "from=wheel" in rest and "--no-deps /wheels/*.whl" in rest]
        assert len(installs) == 1, f"{target} installs the one tokshard wheel, without touching its dependencies"
        assert all("pip install" not in rest for rest in runs[installs[0] + 1:]), "dependencies before the source"
        exposed = {int(p) for keyword, rest in instructions if keyword == "EXPOSE" for p in rest.split()}
        assert {6379, 8265, 8000} <= exposed
        # compose mounts volumes at these paths: the image creates them owned by its user (named volumes copy that)
        assert any(keyword == "RUN" and "mkdir -p /data /outputs" in rest and f"chown {users[-1]}:" in rest
                   for keyword, rest in instructions)
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword == "RUN" and re.search(r"\bpip (install|wheel)\b", rest):
                assert rest.count("--no-cache-dir") == len(re.findall(r"\bpip (install|wheel)\b", rest)), rest
                # pip may download here: it gets the optional CA bundle secret (networks that intercept TLS).
                if "--no-deps /wheels/" not in rest:
                    assert "--mount=type=secret,id=pip_cert" in rest and "PIP_CERT=/run/secrets/pip_cert" in rest, rest
    # A `# syntax=` directive makes BuildKit pull a frontend image from a registry: offline builds fail.
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.MULTILINE | re.IGNORECASE)


def test_dockerfile_installs_the_dependencies_of_pyproject_before_the_source(tmp_path):
    deps = stage_chain("runtime")[0]
    copies = [rest.split() for keyword, rest in deps.instructions if keyword == "COPY"]
    assert copies == [["pyproject.toml", "./"]], "only pyproject.toml before the dependency layer (cache)"
    [(code, args)] = python_snippets(deps)
    extras = build_args(deps)["EXTRAS"]
    assert args == ["$EXTRAS"] and "service" in extras.split(","), "the api service needs the service extra"
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    listed = subprocess.run([sys.executable, "-c", code, extras], cwd=tmp_path, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    project = PYPROJECT["project"]
    extra_deps = [d for e in extras.split(",") for d in project["optional-dependencies"][e]]
    assert listed == [*project["dependencies"], *extra_deps]

    trainer = stage_chain("trainer")[-1]
    [(code, args)] = python_snippets(trainer)
    listed = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert listed == project["optional-dependencies"]["trainer"]
    from packaging.specifiers import SpecifierSet

    torch = build_args(trainer)["TORCH_VERSION"]
    torch_range = next(d for d in listed if d.startswith("torch")).removeprefix("torch")
    assert torch in SpecifierSet(torch_range) and f"torch=={torch}" in (REPO / "Makefile").read_text()

    wheel = next(s for s in dockerfile_stages() if s.name == "wheel")
    sources = {rest.split()[0] for keyword, rest in wheel.instructions if keyword == "COPY"}
    folders = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert folders == {"tokshard", "pipeline", "service", "trainer"}
    assert sources == {"README.md", *folders}
    assert project["readme"] == "README.md"


def dockerignore_included(path: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for negated, pattern in patterns:
        if any(pattern.fullmatch(p) for p in prefixes):
            included = negated
    return included


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated, glob = line.startswith("!"), line.lstrip("!").strip().strip("/")
            regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
            patterns.append((negated, re.compile(regex.replace(r"\?", "[^/]"))))
    return patterns


def test_dockerignore_sends_only_what_the_image_needs():
    patterns = dockerignore_patterns()
    needed = ["pyproject.toml", "README.md"] + [
        str(p.relative_to(REPO)) for pkg in PACKAGE_FOLDERS for p in (REPO / pkg).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts]
    assert "pipeline/data/sample.parquet" in needed
    missing = [p for p in needed if not dockerignore_included(p, patterns)]
    assert not missing, f"left out of the build context: {missing[:5]}"
    for kept_out in (".env", ".venv/bin/python", ".git/HEAD", "out/sample/manifest.json", "tests/conftest.py",
                     "bench/encode_throughput.py", "docs/benchmarks.md", "pipeline/__pycache__/cli.cpython-311.pyc",
                     "docker-compose.yml"):
        assert not dockerignore_included(kept_out, patterns), f"{kept_out} would be sent to the Docker daemon"
    for stage in dockerfile_stages():
        for keyword, rest in stage.instructions:
            if keyword == "COPY" and not rest.startswith("--from"):
                source = rest.split()[0]
                assert (REPO / source).exists() and dockerignore_included(source, patterns), source


# -- deploy/cluster-*.yaml ------------------------------------------------------------------------------------
def shell_commands(command: str) -> list[list[str]]:
    """The simple commands of a `;`/`&&`-joined line, each without leading VAR=value assignments."""
    out = []
    for part in re.split(r"\s*(?:;|&&|\|\|)\s*", command):
        words = shlex.split(part)
        while words and re.fullmatch(r"\w+=\S*", words[0]):
            words.pop(0)
        if words:
            out.append(words)
    return out


def ray_starts(commands: list[str]) -> list[tuple[str, Any]]:
    """(the command line, Ray's parsed `ray start` context) for each `ray start` in the commands."""
    found = []
    for command in commands:
        for words in shell_commands(command):
            if Path(words[0]).name == "ray" and words[1] == "start":
                assert "RAY_AUTH_MODE=token" in command, f"{command}: Ray must start with token auth"
                found.append((words[0], check_command(words)))
    return found


@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_cluster_config_passes_rays_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(path.read_text())
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating: defaults, node types
    validate_config(config)  # Ray's ray-schema.json plus its own consistency checks
    for name, node in config["available_node_types"].items():
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"], name
    if raw["provider"]["type"] == "aws":
        nodes = raw["available_node_types"]
        head, workers = nodes[raw["head_node_type"]], [n for k, n in nodes.items() if k != raw["head_node_type"]]
        assert head["resources"] == {"CPU": 0}, "the head runs drivers, not encode tasks"
        assert workers and all(n["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for n in workers)
        assert all(n["min_workers"] >= 1 for n in workers), "encode sizes its parallelism from the CPUs it sees"
    else:
        assert raw["provider"]["type"] == "local" and raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
        assert raw["auth"]["ssh_user"]


@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_cluster_config_installs_this_checkout_and_starts_ray(path):
    config = yaml.safe_load(path.read_text())
    mounts = config["file_mounts"]
    assert mounts.pop("~/.ray/auth_token") == "~/.ray/auth_token", "every node gets the cluster's auth token"
    # The same files as the Docker build context, to the same place on every node.
    assert mounts == {f"~/tokshard/{p}": p for p in ("pyproject.toml", "README.md", *PACKAGE_FOLDERS)}
    patterns = dockerignore_patterns()
    assert all((REPO / p).exists() and dockerignore_included(p, patterns) for p in mounts.values())
    commands = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
                for c in config.get(key, [])]
    for command in commands:
        proc = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path.name}: {command}\n{proc.stderr}"
    setup = config["setup_commands"]
    venv = setup.index("python3 -m venv ~/tokshard-env")
    installs = [c for c in setup[venv + 1:] if c.startswith("~/tokshard-env/bin/pip install ")]
    assert installs and "~/tokshard" in shlex.split(installs[0]), "setup installs the mounted checkout in the venv"
    assert {"--no-deps", "--force-reinstall", "~/tokshard"} <= set(shlex.split(installs[-1])), \
        "tokshard itself is reinstalled from the checkout even when its version did not change"
    for command in commands:  # packages only: a cluster with just a PyPI/Debian mirror must come up
        assert not re.search(r"\b(curl|wget)\b|\|\s*(ba)?sh\b", command), f"{path.name} downloads: {command}"

    [(ray, head)] = ray_starts(config["head_start_ray_commands"])
    [(ray_worker, worker)] = ray_starts(config["worker_start_ray_commands"])
    assert ray == ray_worker == "~/tokshard-env/bin/ray"
    assert head.params["head"] and head.params["dashboard_host"] == "127.0.0.1"  # reach it with `ray dashboard`
    assert head.params["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    assert worker.params["address"] == f"$RAY_HEAD_IP:{head.params['port']}"


# -- the compose topology, run as local processes -----------------------------------------------------------------
class TokenAuthCluster(LocalCluster):
    """LocalCluster with Ray token auth, as docker-compose.yml runs it: every node and client shares one token."""

    token = secrets.token_hex(32)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}, **kwargs)


def agent_port(node: subprocess.Popen) -> int:
    return int(option(node.args, "--dashboard-agent-listen-port"))


@dataclass
class Localized:
    """Maps compose's addresses and paths onto the local processes: service names and container ports to loopback
    ports, /outputs and /data to directories, executables to this environment's."""

    replacements: dict[str, str]
    paths: dict[str, Path]

    def __call__(self, args: list[str]) -> list[str]:
        out = []
        for arg in args:
            arg = self.replacements.get(arg, arg)
            for old, new in self.replacements.items():
                if ":" in old:  # host:port inside URLs and addresses
                    arg = arg.replace(old, new)
            for container, local in self.paths.items():
                if arg == container or arg.startswith(container + "/"):
                    arg = str(local) + arg[len(container):]
            out.append(arg)
        if out[0] in ("ray", "tokshard", "python"):
            out[0] = sys.executable if out[0] == "python" else str(BIN / out[0])
        leftover = [a for a in out if "ray-head" in a or "0.0.0.0" in a or re.match(r"/(outputs|data)\b", a)]
        assert not leftover, f"no local equivalent for {leftover}: extend the mapping"
        return out


def http(url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    return http_json(url, body, {"Authorization": f"Bearer {token}"} if token else None)


def healthy(service: dict[str, Any], local: Localized) -> bool:
    return subprocess.run(local(service["healthcheck"]["test"][1:]), capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow
def test_compose_topology_as_local_processes(tmp_path):
    """docker-compose.yml's services as processes on loopback, in compose's start order, with compose's commands:
    head (healthy) -> 2 workers (healthy) -> `encode` submits `tokshard run` to the job server -> `api` serves the
    tokenizer the job wrote; every healthcheck passes, the job server refuses requests without the token."""
    spec = load_compose({"RAY_AUTH_TOKEN": TokenAuthCluster.token, "RAY_WORKER_CPUS": "1"})["services"]
    head_params = parse_ray(argv(spec["ray-head"])[1:]).params
    worker_params = parse_ray(argv(spec["ray-worker"])[1:]).params
    outputs, api_port = tmp_path / "outputs", free_port()
    cluster = TokenAuthCluster(head_cpus=head_params["num_cpus"], dashboard=True)
    server = None
    try:
        dashboard = f"127.0.0.1:{cluster.dashboard_port}"
        base = {"ray-head:6379": cluster.address, f"ray-head:{head_params['dashboard_port']}": dashboard,
                f"127.0.0.1:{head_params['dashboard_port']}": dashboard,
                f"127.0.0.1:{option(argv(spec['api']), '--port')}": f"127.0.0.1:{api_port}",
                "0.0.0.0": "127.0.0.1", option(argv(spec["api"]), "--port"): str(api_port)}
        paths = {"/outputs": outputs}

        def on(node: subprocess.Popen) -> Localized:
            agent = f"127.0.0.1:{head_params['dashboard_agent_listen_port']}"
            return Localized({**base, agent: f"127.0.0.1:{agent_port(node)}"}, paths)

        wait_for(lambda: healthy(spec["ray-head"], on(cluster.nodes[0])), 180, "the head's healthcheck", 0.5)
        workers = [cluster.add_node(cpus=worker_params["num_cpus"]) for _ in range(spec["ray-worker"]["deploy"]
                                                                                  ["replicas"])]
        for node in workers:
            wait_for(lambda node=node: healthy(spec["ray-worker"], on(node)), 180, "a worker's healthcheck", 0.5)

        # Without the token the job server refuses; compose's encode service has it in its environment.
        assert http(f"http://{dashboard}/api/jobs/")[0] == 401
        assert http(f"http://{dashboard}/api/jobs/", token="0" * 64)[0] == 403

        # `encode`: the compose command, with small slices so that both workers get tasks and a small vocabulary to
        # keep the test short.
        submit = [*on(cluster.nodes[0])(argv(spec["encode"])), "--slice-mb", "1", "--vocab-size", "4096"]
        job_env = {**cluster.env, **spec["encode"]["environment"]}
        proc = subprocess.run(submit, env=job_env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = Path(on(cluster.nodes[0])([option(argv(spec["encode"]), "--out")])[0])
        manifest = Manifest.read(out)
        assert manifest.data["complete"] and manifest.totals()["all"]["documents"] == len(sample_texts())
        assert manifest.verify(out) == []

        # The encode tasks ran on the two workers (the head has no CPUs), as Ray's state API reports them.
        query = urllib.parse.urlencode({"filter_keys": "name", "filter_predicates": "=", "filter_values":
                                        "encode_slice", "detail": "true", "limit": "1000"})
        status, answer = http(f"http://{dashboard}/api/v0/tasks?{query}", token=TokenAuthCluster.token)
        assert status == 200, answer
        tasks = answer["data"]["result"]["result"]
        finished = {t["node_id"] for t in tasks if t["state"] == "FINISHED"}
        assert len(tasks) >= 2 and len(finished) == 2, tasks

        # `api`: compose's command and healthcheck, serving the tokenizer the job wrote.
        local = on(cluster.nodes[0])
        log = tmp_path / "api.log"
        with log.open("wb") as sink:
            server = subprocess.Popen(local(argv(spec["api"])), env={**os.environ, **spec["api"]["environment"]},
                                      stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: server.poll() is not None or healthy(spec["api"], local), 60, "the api's healthcheck", 0.25)
        assert server.poll() is None, log.read_text()[-3000:]
        tok = Tokenizer.load(out / "tokenizer")
        texts = [*sample_texts(5), "中文 テキスト 😀 naïve café", "   spaced\tout\n\n", ""]
        status, answer = http(f"http://127.0.0.1:{api_port}/v1/tokenize", {"prompt": texts})
        assert status == 200, answer
        assert [item["tokens"] for item in answer["data"]] == [tok.encode(t) for t in texts]
        status, info = http(f"http://127.0.0.1:{api_port}/v1/info")
        assert info["tokenizer"]["sha256"] == manifest.tokenizer["sha256"] == tok.sha256
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        for node in reversed(cluster.nodes):  # SIGKILL: a graceful `ray start --block` exit takes 30-60 s here
            if node.poll() is None:
                cluster.kill_node(node)
        cluster.stop()  # whatever the killed nodes left behind
