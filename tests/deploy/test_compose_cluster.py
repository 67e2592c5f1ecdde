"""docker-compose.yml on a real Docker engine, as README's "Docker compose" section tells a user to run it.

From the checkout: the base image (deploy/base-image.sh: the registry's python:3.11, or one made from Debian
packages), the runtime image (deploy/Dockerfile), `docker compose up` (Ray head, 2 workers, the encode job on the
bundled sample, the API); the job succeeded and `tokshard inspect` verifies its output; the API (behind an API key)
returns the ids a local encode with the job's tokenizer gives; published ports are on 127.0.0.1 only and the job
server refuses requests without the Ray token; then 3 workers, one killed while it runs an encode task of a larger
encode, and every document is in the shards exactly once. `docker compose down -v` at the end, whatever happened.

Marked `compose` (minutes, needs an engine and, without a registry, root + debootstrap): `make test-compose`.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import free_port, sample_texts, shard_ids
from tests.conftest import http_json as http
from tests.deploy.docker_harness import (
    REPO,
    ComposeProject,
    built_image,
    docker,
    wait_until,
)
from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.tokenizer import Tokenizer

# image builds and a cluster on a shared 2-core machine: well past pyproject's 600 s default
pytestmark = [pytest.mark.compose, pytest.mark.timeout(2400)]

BIG_COPIES = 16  # the bundled sample 16 times over: ~70 MB of text, ~35 slices of 2 MB on 3 one-CPU workers
SLICE_MB = 2



class Cluster:
    """The running compose project and what the test gave it."""

    def __init__(self, project: ComposeProject, dashboard_port: int, api_port: int, data: Path) -> None:
        self.project, self.data = project, data
        self.token, self.api_key = project.env["RAY_AUTH_TOKEN"], project.env["TOKSHARD_API_KEY"]
        self.dashboard = f"http://127.0.0.1:{dashboard_port}"
        self.api = f"http://127.0.0.1:{api_port}"

    def ray_api(self, path: str) -> object:
        status, answer = http(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        assert status == 200, f"{path}: {status} {answer}"
        return answer

    def alive_nodes(self) -> int:
        nodes = self.ray_api("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        return sum(n["state"] == "ALIVE" for n in nodes)

    def copy_out(self, container_path: str, dest: Path) -> Path:
        self.project("cp", f"ray-head:{container_path}", str(dest))
        return dest


def write_big_corpus(data: Path) -> Path:
    texts = sample_texts()
    ids = [f"copy{c}-doc{i}" for c in range(BIG_COPIES) for i in range(len(texts))]
    path = data / "big.parquet"
    pq.write_table(pa.table({"text": texts * BIG_COPIES, "id": ids}), path, row_group_size=64)
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, python_base_image):
    tmp = tmp_path_factory.mktemp("compose")
    # /data is read by the containers' user (uid 1000): a world-readable directory outside pytest's private tmp.
    data = Path(tempfile.mkdtemp(prefix="tokshard-compose-data-"))
    data.chmod(0o755)
    write_big_corpus(data)
    dashboard_port, api_port = free_port(), free_port()
    base = python_base_image
    with built_image("runtime", base) as image:
        project = ComposeProject(REPO / "docker-compose.yml", "compose", env={
            "RAY_AUTH_TOKEN": secrets.token_hex(32), "TOKSHARD_API_KEY": secrets.token_hex(16),
            "TOKSHARD_IMAGE": image, "PYTHON_IMAGE": base, "TOKSHARD_DATA": str(data),
            "TOKSHARD_DASHBOARD_PORT": str(dashboard_port), "TOKSHARD_API_PORT": str(api_port),
            "RAY_WORKER_CPUS": "1", "RAY_WORKER_MEMORY": "3g"}, env_file=tmp / "empty.env")
        try:
            # `up` waits for each dependency's condition: it returns once `encode` exited 0 and `api` started.
            started = time.monotonic()
            proc = project("up", "-d", "--no-build", check=False, timeout=1200)
            assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{project.logs()}"
            print(f"compose up (head, 2 workers, encode job, api): {time.monotonic() - started:.0f} s")
            yield Cluster(project, dashboard_port, api_port, data)
        finally:
            project.down()
            shutil.rmtree(data, ignore_errors=True)


def test_encode_job_succeeded_and_its_output_verifies(cluster, tmp_path):
    project = cluster.project
    [encode] = project.ps_all("encode")
    assert encode["State"] == "exited" and encode["ExitCode"] == 0, encode
    logs = project("logs", "--no-color", "encode").stdout
    assert "succeeded" in logs, logs[-3000:]
    inspect = project("exec", "-T", "ray-head", "tokshard", "inspect", "--json", "/outputs/sample", check=False)
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    summary = json.loads(inspect.stdout)
    assert summary["problems"] == [] and summary["shards"] > 0, summary
    out = cluster.copy_out("/outputs/sample", tmp_path / "sample")
    manifest = Manifest.read(out)
    assert manifest.data["complete"] and manifest.totals()["all"]["documents"] == len(sample_texts())
    assert manifest.verify(out) == []


def test_api_returns_the_ids_of_a_local_encode_and_needs_its_key(cluster, tmp_path):
    wait_until(lambda: http(cluster.api + "/readyz")[0] == 200, 120, "the API's /readyz")
    tok = Tokenizer.load(cluster.copy_out("/outputs/sample/tokenizer", tmp_path / "tokenizer"))
    texts = [*sample_texts(5), "中文 テキスト 😀 naïve café", "   spaced\tout\n\n", ""]
    url = cluster.api + "/v1/tokenize"
    assert http(url, {"prompt": texts})[0] == 401
    assert http(url, {"prompt": texts}, {"Authorization": "Bearer wrong"})[0] == 401
    status, answer = http(url, {"prompt": texts}, {"Authorization": f"Bearer {cluster.api_key}"})
    assert status == 200, answer
    assert [item["tokens"] for item in answer["data"]] == [tok.encode(t) for t in texts]


def test_published_ports_are_on_loopback_and_ray_needs_the_token(cluster):
    project = cluster.project
    containers = json.loads(docker("inspect", *project("ps", "-q").stdout.split()).stdout)
    bindings = [c["HostConfig"]["PortBindings"] for c in containers]
    published = [b for ports in bindings if ports for binds in ports.values() for b in binds]
    assert len(published) == 2 and all(b["HostIp"] == "127.0.0.1" for b in published), published
    # The job server: no token -> 401, a wrong one -> 403, the cluster's -> 200.
    assert http(cluster.dashboard + "/api/jobs/")[0] == 401
    assert http(cluster.dashboard + "/api/jobs/", headers={"Authorization": "Bearer " + "0" * 64})[0] == 403
    assert cluster.ray_api("/api/jobs/") is not None
    # A Ray client on the compose network with a wrong token cannot join the cluster's GCS.
    wrong = project("run", "--rm", "--no-deps", "-e", "RAY_AUTH_TOKEN=" + "1" * 64, "ray-worker", "python", "-c",
                    "import ray; ray.init(address='ray-head:6379'); print('JOINED')", check=False, timeout=300)
    assert wrong.returncode != 0 and "JOINED" not in wrong.stdout, wrong.stdout[-2000:] + wrong.stderr[-2000:]


def test_three_workers_one_killed_mid_encode_every_document_exactly_once(cluster, tmp_path):
    project = cluster.project
    project("up", "-d", "--no-build", "--no-deps", "--scale", "ray-worker=3", "ray-worker")
    wait_until(lambda: cluster.alive_nodes() == 4, 300, "the head and 3 workers ALIVE")
    job = project.popen("run", "--rm", "--no-deps", "encode", "tokshard", "encode", "--source", "/data/big.parquet",
                        "--tokenizer", "/outputs/sample/tokenizer", "--out", "/outputs/big", "--slice-mb",
                        str(SLICE_MB), "--no-progress", log=tmp_path / "job.log")
    try:
        def busy_worker() -> str | None:
            """A worker container running an encode task now (Ray titles the process `ray::encode_slice`)."""
            for name in project.containers("ray-worker"):
                if "ray::encode_slice" in docker("top", name, check=False).stdout:
                    return name
            assert job.poll() is None, "the encode finished before a worker could be killed mid-task"
            return None

        victim = wait_until(busy_worker, 600, "an encode task running on a worker", interval=0.2)
        docker("kill", victim)
        assert job.wait(timeout=900) == 0, (tmp_path / "job.log").read_text()[-4000:]
    finally:
        if job.poll() is None:
            job.kill()
    out = cluster.copy_out("/outputs/big", tmp_path / "big")
    manifest = Manifest.read(out)
    assert manifest.data["complete"] and manifest.verify(out) == []
    expected = Counter(pq.read_table(cluster.data / "big.parquet", columns=["id"]).column("id").to_pylist())
    assert shard_ids(out) == expected
