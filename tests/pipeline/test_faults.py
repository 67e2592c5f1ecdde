"""Faults during a real encode: a worker process killed, a whole node killed, the driver killed -- into a local
directory and into an S3 bucket (a real S3-compatible server, conftest's `s3_server`).

After each, every source document must be in the committed shards exactly once, the shards must be byte-identical
to an uninterrupted local run, and nothing uncommitted may be left behind. The victims are chosen while an encode
task is really running on them (Ray titles a worker `ray::encode_slice` while it executes one), never after a
fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import committed_shard_bytes, sample_texts, shard_bytes
from tests.local_cluster import LocalCluster, processes_with_env, task_processes, wait_for
from tokshard.pipeline import jobs, storage
from tokshard.pipeline.manifest import Manifest, unlisted_shards
from tokshard.pipeline.shards import ShardReader

SLICE_MB = 1
STORES = ["local", "s3"]
MAX_FAULT_ATTEMPTS = 3


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    """The bundled sample 16 times over (unique ids), in small row groups: ~67 MB of text, ~67 slices."""
    texts = sample_texts()
    path = tmp_path_factory.mktemp("faults") / "big.parquet"
    ids = [f"copy{c}-doc{i}" for c in range(16) for i in range(len(texts))]
    pq.write_table(pa.table({"text": texts * 16, "id": ids}), path, row_group_size=40)
    return path


@pytest.fixture(scope="module")
def reference(big_source, small_tokenizer_dir, tmp_path_factory, ray_cluster):
    out = tmp_path_factory.mktemp("faults-ref") / "out"
    result = jobs.encode(str(big_source), small_tokenizer_dir, out, slice_bytes=SLICE_MB << 20, show_progress=False)
    assert result.complete and len(result.manifest.shards) > 10
    return out


@pytest.fixture(params=STORES)
def out(request, tmp_path) -> str:
    """Where the faulty run writes: a local directory, or a fresh bucket on the session's S3 server."""
    if request.param == "local":
        return str(tmp_path / "out")
    return f"{request.getfixturevalue('s3_bucket')}/out"


def _assert_exactly_once_and_identical(out: str, reference: Path, big_source: Path) -> None:
    ids = Counter()
    records = Manifest.read(out).shards
    for rec in records:
        with ShardReader(storage.join(out, rec["path"]), sha256=rec["sha256"]) as r:
            ids.update(r.ids)
    assert ids == Counter(pq.read_table(big_source, columns=["id"]).column("id").to_pylist())
    assert committed_shard_bytes(out) == shard_bytes(reference)
    assert unlisted_shards(out, records) == []  # no dead attempt's shard is left behind
    if not storage.is_url(out):
        assert not list(Path(out).glob("*/*.tmp-*"))  # nothing half-written survives


def _encode_cmd(big_source, tok_dir, out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tokshard", "encode", "--source", str(big_source), "--tokenizer", str(tok_dir),
            "--out", str(out), "--slice-mb", str(SLICE_MB), "--no-progress", "--json", *extra]


def _committed_slices(out: str) -> int:
    """Slice records under their final names: a driver killed mid-write leaves a `*.json.tmp-*` sibling, which
    commits nothing and must not be counted as a finished slice."""
    return sum(name.endswith(".json") for name in storage.list_files(storage.join(out, "slices")))


@pytest.mark.slow
def test_worker_process_and_worker_node_killed_mid_task(big_source, small_tokenizer_dir, reference, out):
    # No CPUs on the head (as in docker-compose.yml): every task runs on the two worker nodes, so both are busy
    # until the last slices (Ray's scheduler would otherwise keep short tasks on the driver's node).
    cluster = LocalCluster(head_cpus=0)
    try:
        workers = [cluster.add_node(cpus=1), cluster.add_node(cpus=1)]

        def busy_on_worker_nodes() -> list[tuple[int, subprocess.Popen]]:
            return [(pid, n) for pid in task_processes("encode_slice") for n in workers if cluster.runs_on(n, pid)]

        def busy_on_both_worker_nodes() -> list[tuple[int, subprocess.Popen]]:
            busy = busy_on_worker_nodes()
            return busy if len({id(node) for _, node in busy}) == len(workers) else []

        # Both faults are caught in one look, while each worker node runs a slice: with a fast engine a slice takes
        # a fraction of a second, and waiting for a second task after the first fault could miss the whole run.
        # The whole run takes 2-4 s, so a node whose first worker process starts late can leave no moment with
        # both nodes busy: such a run proves nothing, and the fault is tried again on a fresh output.
        first_out = out
        for attempt in range(1, MAX_FAULT_ATTEMPTS + 1):
            driver = subprocess.Popen(_encode_cmd(big_source, small_tokenizer_dir, out, "--address", cluster.address),
                                      env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            busy = wait_for(lambda: busy_on_both_worker_nodes() or driver.poll() is not None, 180,  # noqa: B023
                            "encode tasks running on both worker nodes (or the run to end)")
            if busy is not True:
                break
            _, stderr = driver.communicate()
            assert driver.returncode == 0, stderr[-3000:]
            assert attempt < MAX_FAULT_ATTEMPTS, f"no moment with both worker nodes busy in {attempt} runs"
            out = f"{first_out}-{attempt + 1}"  # the finished run stays where it is; the next attempt writes anew
        victim_pid, victim = busy[0]
        pid = next(p for p, node in busy if node is not victim)
        # A worker process dies while it encodes a slice: Ray retries the task.
        os.kill(pid, signal.SIGKILL)
        # A whole node dies while it encodes a slice: its tasks are retried on the nodes left.
        cluster.kill_node(victim)
        assert victim_pid != pid
        stdout, stderr = driver.communicate(timeout=300)
        assert driver.returncode == 0, stderr[-3000:]
        assert json.loads(stdout)["complete"] is True, stdout[-3000:]
        _assert_exactly_once_and_identical(out, reference, big_source)
    finally:
        cluster.stop()


def _kill_everything_of(marker: str) -> None:
    """SIGKILL every process of a Ray instance (driver, GCS, raylet, workers) until none is left: a worker that
    outlived its raylet for a moment could otherwise still write while the resumed run starts."""
    def all_gone() -> bool:
        for pid in processes_with_env(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not processes_with_env(marker)

    wait_for(all_gone, 60, f"every process with {marker} to exit", interval=0.2)


@pytest.mark.slow
def test_driver_killed_then_rerun_resumes(big_source, small_tokenizer_dir, reference, out, ray_cluster):
    ray_tmp = tempfile.mkdtemp(prefix="rd-", dir="/tmp")
    marker = f"RAY_TMPDIR={ray_tmp}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": ray_tmp}
    # --workers 1: slow enough that the driver dies with slices both finished and unfinished (~34 slices).
    cmd = _encode_cmd(big_source, small_tokenizer_dir, out, "--workers", "1", "--no-in-process")  # Ray's driver
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: _committed_slices(out) >= 3, 180, "three committed slices")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, as a machine dying would
        driver.wait(timeout=30)
        _kill_everything_of(marker)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    # Counted only once nothing of the killed run can write any more.
    finished = _committed_slices(out)
    assert not storage.exists(storage.join(out, "manifest.json"))
    assert finished < 30, "the killed run finished almost everything; the test needs unfinished slices"
    result = jobs.encode(str(big_source), small_tokenizer_dir, out, slice_bytes=SLICE_MB << 20, show_progress=False)
    assert result.complete and result.slices_kept >= finished >= 3 and result.slices_encoded > 0
    _assert_exactly_once_and_identical(out, reference, big_source)
