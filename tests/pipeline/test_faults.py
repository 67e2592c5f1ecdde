"""Faults during a real encode: a worker process killed, a whole node killed, the driver killed.

After each, every source document must be in the shards exactly once and the shards must be byte-identical to an
uninterrupted run. The victims are chosen while an encode task is really running on them (Ray titles a worker
`ray::encode_slice` while it executes one), never after a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import sample_texts, shard_bytes
from tests.local_cluster import LocalCluster, processes_mentioning, task_processes, wait_for
from tokshard.pipeline import jobs
from tokshard.pipeline.shards import ShardReader

SLICE_MB = 1


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    """The bundled sample eight times over (unique ids), in small row groups: ~34 MB of text, ~34 slices."""
    texts = sample_texts()
    path = tmp_path_factory.mktemp("faults") / "big.parquet"
    ids = [f"copy{c}-doc{i}" for c in range(8) for i in range(len(texts))]
    pq.write_table(pa.table({"text": texts * 8, "id": ids}), path, row_group_size=40)
    return path


@pytest.fixture(scope="module")
def reference(big_source, small_tokenizer_dir, tmp_path_factory, ray_cluster):
    out = tmp_path_factory.mktemp("faults-ref") / "out"
    result = jobs.encode(str(big_source), small_tokenizer_dir, out, slice_bytes=SLICE_MB << 20, show_progress=False)
    assert result.complete and len(result.manifest.shards) > 10
    return out


def _assert_exactly_once_and_identical(out, reference, big_source) -> None:
    ids = Counter()
    for p in out.glob("*/shard-*.arrow"):
        with ShardReader(p) as r:
            ids.update(r.ids)
    assert ids == Counter(pq.read_table(big_source, columns=["id"]).column("id").to_pylist())
    assert shard_bytes(out) == shard_bytes(reference)


def _encode_cmd(big_source, tok_dir, out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tokshard", "encode", "--source", str(big_source), "--tokenizer", str(tok_dir),
            "--out", str(out), "--slice-mb", str(SLICE_MB), "--no-progress", "--json", *extra]


@pytest.mark.slow
def test_worker_process_and_worker_node_killed_mid_task(big_source, small_tokenizer_dir, reference, tmp_path):
    cluster = LocalCluster(head_cpus=1)
    try:
        workers = [cluster.add_node(cpus=1), cluster.add_node(cpus=1)]
        out = tmp_path / "out"
        driver = subprocess.Popen(_encode_cmd(big_source, small_tokenizer_dir, out, "--address", cluster.address),
                                  env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def busy_on_worker_nodes() -> list[tuple[int, subprocess.Popen]]:
            return [(pid, n) for pid in task_processes("encode_slice") for n in workers if cluster.runs_on(n, pid)]

        # A whole node dies while it encodes a slice: its tasks are retried on the nodes left.
        victim_pid, victim = wait_for(busy_on_worker_nodes, 120, "an encode task running on a worker node")[0]
        cluster.kill_node(victim)
        # A worker process dies while it encodes a slice: Ray retries the task.
        pid, _ = wait_for(lambda: [x for x in busy_on_worker_nodes() if x[1] is not victim], 120,
                          "an encode task running on the other worker node")[0]
        os.kill(pid, signal.SIGKILL)
        assert victim_pid != pid
        stdout, stderr = driver.communicate(timeout=300)
        assert driver.returncode == 0, stderr[-3000:]
        assert json.loads(stdout)["complete"] is True, stdout[-3000:]
        _assert_exactly_once_and_identical(out, reference, big_source)
    finally:
        cluster.stop()


@pytest.mark.slow
def test_driver_killed_then_rerun_resumes(big_source, small_tokenizer_dir, reference, tmp_path, ray_cluster):
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="rd-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": ray_tmp}
    # --workers 1: slow enough that the driver dies with slices both finished and unfinished.
    cmd = _encode_cmd(big_source, small_tokenizer_dir, out, "--workers", "1", "--no-in-process")  # Ray's driver
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: len(list((out / "slices").glob("*.json"))) >= 3, 180, "three finished slices")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, as a machine dying would
        driver.wait(timeout=30)
        for pid in processes_mentioning(ray_tmp):
            os.kill(pid, signal.SIGKILL)
    assert not (out / "manifest.json").exists()
    finished = len(list((out / "slices").glob("*.json")))
    result = jobs.encode(str(big_source), small_tokenizer_dir, out, slice_bytes=SLICE_MB << 20, show_progress=False)
    assert result.complete and result.slices_kept >= finished >= 3 and result.slices_encoded > 0
    assert not list(out.glob("*/*.tmp-*"))  # nothing half-written survives
    _assert_exactly_once_and_identical(out, reference, big_source)
