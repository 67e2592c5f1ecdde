"""deploy/: the job entry points run against a real multi-process Ray cluster on loopback, as users run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.local_cluster import RAY, LocalCluster, wait_for
from tokshard.pipeline.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster_with_dashboard():
    cluster = LocalCluster(head_cpus=1, dashboard=True)
    try:
        cluster.add_node(cpus=1)
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
def test_ray_job_submit_encodes_on_the_cluster(cluster_with_dashboard, corpus_dir, small_tokenizer_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    cluster = cluster_with_dashboard
    dashboard = f"http://127.0.0.1:{cluster.dashboard_port}"
    client = JobSubmissionClient(dashboard)
    wait_for(lambda: client.list_jobs() is not None, 60, "the job server")
    out = tmp_path / "shards"
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", dashboard, "--working-dir", str(REPO), "--submission-id", "tokshard-test",
         "--", "tokshard", "encode", "--source", str(corpus_dir), "--tokenizer", str(small_tokenizer_dir),
         "--out", str(out), "--slice-mb", "1", "--no-progress"],
        env=cluster.env, capture_output=True, text=True, timeout=600)
    status = client.get_job_status("tokshard-test")
    assert status == JobStatus.SUCCEEDED, f"{status}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "encoded 606 documents" in client.get_job_logs("tokshard-test")
    manifest = Manifest.read(out)
    assert manifest.data["complete"] and manifest.totals()["all"]["documents"] == 606
    assert manifest.verify(out) == []


@pytest.mark.slow
def test_ray_submit_scripts_join_the_cluster_they_run_on(cluster_with_dashboard, corpus_dir, tmp_path):
    """`ray submit` copies the script to the head and runs it there with `python`; RAY_ADDRESS is how a head's
    shell finds its cluster (`ray start` writes it for `auto`, which a second cluster on one test machine would
    confuse), so the test sets it."""
    env = {**cluster_with_dashboard.env, "RAY_ADDRESS": cluster_with_dashboard.address}
    tok = tmp_path / "tok"
    for script, args in (("train_tokenizer.py", ["--source", str(corpus_dir), "--out", str(tok), "--vocab-size",
                                                 "600", "--json"]),
                         ("encode.py", ["--source", str(corpus_dir / "part-00.parquet"), "--tokenizer", str(tok),
                                        "--out", str(tmp_path / "shards"), "--json", "--no-progress"])):
        proc = subprocess.run([sys.executable, str(REPO / "deploy" / "jobs" / script), *args], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Connected to Ray cluster" in proc.stderr or "existing Ray cluster" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["complete"] and summary["documents"] == 256
