"""`ray up` + `ray submit` + `ray down` with deploy/cluster-onprem.yaml, as README's "Cluster launcher" tells a user.

The machines are two containers running sshd on a Docker network this test creates (tests/deploy/ssh-node.Dockerfile,
ssh-nodes.compose.yml): no tokshard, no Ray, just SSH, rsync and Python. The config is deploy/cluster-onprem.yaml
with only the machine-specific fields replaced (addresses, SSH key, a cluster name unique to the run); its setup
commands install tokshard on each node from PyPI. Then, from this checkout's venv: `ray get-auth-token --generate`,
`ray up` (head; its autoscaler starts the worker over SSH), `ray rsync-up` of a corpus to the shared filesystem,
`ray submit` of deploy/jobs/train_tokenizer.py and deploy/jobs/encode.py, the outputs fetched with `ray rsync-down`
and checked (every document exactly once, the manifest verifies, the tokenizer is the one trained); the Ray token
guards the job server and the GCS, the dashboard listens on the head's loopback only; `ray down` stops Ray on every
node. The containers, their network and volumes are removed at the end whatever happened.

Marked `compose` (~10 minutes: every node pip-installs tokshard): `make test-compose`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import shard_ids
from tests.deploy.docker_harness import (
    REPO,
    RUN_ID,
    ComposeProject,
    built_image,
    docker,
    wait_until,
)
from tokshard.pipeline import sources
from tokshard.pipeline.manifest import Manifest

# every node pip-installs tokshard: well past pyproject's 600 s default on a shared 2-core machine
pytestmark = [pytest.mark.compose, pytest.mark.timeout(2400)]

HERE = Path(__file__).parent
RAY = Path(sys.executable).parent / "ray"
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]


class Launcher:
    """The `ray` cluster-launcher CLI of this venv, run from the repository root (the config's file_mounts are
    relative to it) with a private HOME (its ~/.ray/auth_token) and RAY_TMPDIR (the local provider's state file)."""

    def __init__(self, config: Path, home: Path, ray_tmp: Path) -> None:
        self.config = config
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env = {**env, "HOME": str(home), "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0"}

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(RAY), *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"ray {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-5000:]}\n"
                                 f"{proc.stderr[-5000:]}")
        return proc

    def on_head(self, command: str, timeout: float = 300) -> str:
        return self("exec", str(self.config), command, timeout=timeout).stdout


def json_in(output: str) -> dict:
    """The JSON object a command printed (`ray exec` may add its own lines around it)."""
    return json.loads(output[output.index("{"):output.rindex("}") + 1])


def address(container: str) -> str:
    return docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container).stdout.strip()


def onprem_config(head_ip: str, worker_ip: str, key: Path) -> dict:
    """deploy/cluster-onprem.yaml with only what differs per site replaced: addresses, key, cluster name."""
    config = yaml.safe_load((REPO / "deploy" / "cluster-onprem.yaml").read_text())
    config["cluster_name"] = RUN_ID
    config["provider"].update(head_ip=head_ip, worker_ips=[worker_ip])
    config["auth"]["ssh_private_key"] = str(key)
    return config


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, python_base_image):
    for tool in ("ssh", "ssh-keygen", "rsync"):  # what `ray up` runs on this machine
        assert shutil.which(tool), f"`ray up` needs {tool} here (Debian/Ubuntu: apt-get install openssh-client rsync)"
    tmp = tmp_path_factory.mktemp("ray-up")
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", RUN_ID, "-f", str(key)], check=True)
    key.with_suffix(".pub").chmod(0o644)
    ca_bundle = os.environ.get("PIP_CERT") or __import__("certifi").where()
    context = tmp / "context"  # the node image needs nothing from the checkout
    context.mkdir()
    with built_image("node", python_base_image, dockerfile=HERE / "ssh-node.Dockerfile", context=context) as image:
        project = ComposeProject(HERE / "ssh-nodes.compose.yml", "sshnodes", env={
            "NODE_IMAGE": image, "AUTHORIZED_KEYS": str(key.with_suffix(".pub")), "NODE_CA_BUNDLE": ca_bundle},
            env_file=tmp / "empty.env")
        try:
            project("up", "-d")
            [head], [worker] = project.containers("head"), project.containers("worker")
            for ip in (address(head), address(worker)):
                wait_until(lambda ip=ip: subprocess.run(["ssh", *SSH_OPTIONS, "-i", str(key), f"tokshard@{ip}",
                                                         "true"], capture_output=True).returncode == 0,
                           60, f"sshd on {ip}")
            yield {"tmp": tmp, "key": key, "head": head, "worker": worker, "project": project}
        finally:
            project.down()


def test_ray_up_submit_down_on_ssh_nodes(nodes):
    tmp, head, worker = nodes["tmp"], nodes["head"], nodes["worker"]
    config_path = tmp / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(onprem_config(address(head), address(worker), nodes["key"])))
    home, ray_tmp = tmp / "home", tmp / "ray"
    home.mkdir()
    ray_tmp.mkdir()
    ray = Launcher(config_path, home, ray_tmp)
    ray("get-auth-token", "--generate")
    token = (home / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 32
    try:
        ray("up", "-y", "--no-config-cache", str(config_path), timeout=1500)
        count_alive = ("python -c 'import ray; ray.init(address=\"auto\", logging_level=\"ERROR\"); "
                       "print(\"ALIVE\", sum(n[\"Alive\"] for n in ray.nodes()))'")
        wait_until(lambda: "ALIVE 2" in ray.on_head(count_alive), 1200, "the autoscaler to start the worker", 15)

        corpus = sources.bundled_sample()
        ray.on_head("mkdir -p /shared/corpus")
        ray("rsync-up", str(config_path), str(corpus), "/shared/corpus/sample.parquet")
        ray("submit", str(config_path), str(REPO / "deploy" / "jobs" / "train_tokenizer.py"), "--",
            "--source", "/shared/corpus", "--out", "/shared/tok", "--vocab-size", "1024", timeout=900)
        ray("submit", str(config_path), str(REPO / "deploy" / "jobs" / "encode.py"), "--",
            "--source", "/shared/corpus", "--tokenizer", "/shared/tok", "--out", "/shared/shards",
            "--slice-mb", "1", "--no-progress", timeout=900)
        inspect = json_in(ray.on_head("tokshard inspect --json /shared/shards"))
        assert inspect["problems"] == [], inspect

        out = tmp / "shards"
        ray("rsync-down", str(config_path), "/shared/shards/", str(out))
        manifest = Manifest.read(out)
        assert manifest.data["complete"] and manifest.verify(out) == []
        assert shard_ids(out) == Counter(pq.read_table(corpus, columns=["id"]).column("id").to_pylist())
        # The shards were encoded with the tokenizer train_tokenizer.py wrote.
        tok = json_in(ray.on_head("tokshard inspect --json /shared/tok"))
        assert tok["problems"] == [] and manifest.tokenizer["sha256"] == tok["sha256"], tok

        check_security(head, worker, token)
    finally:
        ray("down", "-y", str(config_path), check=False, timeout=600)
    # `ray down` runs `ray stop` on the head; with the local provider it only marks the workers terminated, and a
    # worker's Ray exits on its own once the head's GCS has been gone for Ray's reconnect timeout (60 s by default).
    def raylets(container: str) -> int:
        return int(docker("exec", "-u", "tokshard", container, "sh", "-c", "ps -eo args | grep -c '[r]aylet' || true")
                   .stdout.strip() or 0)

    assert raylets(head) == 0, "`ray down` left Ray running on the head"
    wait_until(lambda: raylets(worker) == 0, 180, "the worker's Ray to exit after `ray down`", 5)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def node_python(container: str, code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env_args = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
    return docker("exec", "-u", "tokshard", *env_args, container, "/home/tokshard/tokshard-env/bin/python", "-c",
                  code, check=False, timeout=120)


def check_security(head: str, worker: str, token: str) -> None:
    """The job server refuses a submission without the token; the GCS refuses a client with a wrong one and accepts
    the cluster's; the dashboard/job server is not reachable from another machine."""
    submit = ("import json, urllib.request, urllib.error\n"
              "req = urllib.request.Request('http://127.0.0.1:8265/api/jobs/', json.dumps({'entrypoint': 'id'})"
              ".encode(), {'Content-Type': 'application/json'})\n"
              "try: print(urllib.request.urlopen(req, timeout=10).status)\n"
              "except urllib.error.HTTPError as e: print(e.code)\n")
    assert node_python(head, submit).stdout.strip() == "401"
    head_ip = address(head)
    join = f"import ray; ray.init(address='{head_ip}:6379', logging_level='ERROR'); print('JOINED')"
    refused = node_python(worker, join, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "f" * 64})
    assert refused.returncode != 0 and "JOINED" not in refused.stdout, refused.stdout + refused.stderr[-2000:]
    accepted = node_python(worker, join, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    assert "JOINED" in accepted.stdout, accepted.stderr[-2000:]
    remote = node_python(worker, f"import socket; s = socket.socket(); s.settimeout(5); "
                                 f"print(s.connect_ex(('{head_ip}', 8265)))")
    assert remote.stdout.strip() not in ("", "0"), "the dashboard/job server is reachable from another node"
