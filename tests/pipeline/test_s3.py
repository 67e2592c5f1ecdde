"""Shards and tokenizers on a real S3-compatible server (moto_server on loopback, started by conftest's
`s3_server` fixture; s3fs reaches it through AWS_ENDPOINT_URL and dummy credentials).

The same guarantees as on a local disk: byte-identical shards, `inspect` verifies them, resume keeps committed
slices without a task, readers trust only committed keys and dead attempts' objects are listed and removed, and a
store that cannot be used is refused before any task starts (exit 2).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request

import aiohttp
import pytest
import s3fs
from aiohttp import web

from tests.conftest import committed_shard_bytes, free_port, run_tokshard, shard_bytes, start_moto_server
from tests.local_cluster import wait_for
from tokshard.pipeline import evaluate, export, jobs, mix, storage
from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.shards import ShardReader
from tokshard.pipeline.tokenizer import TOKENIZER_FILES, Tokenizer

SLICE_BYTES = 100_000
ATTEMPT_SUFFIX = re.compile(r"\.[0-9a-f]{12}\.arrow$")


@pytest.fixture(scope="module")
def local_run(corpus_dir, small_tokenizer_dir, tmp_path_factory, ray_cluster):
    out = tmp_path_factory.mktemp("local-run") / "out"
    result = jobs.encode(str(corpus_dir), small_tokenizer_dir, out, val_fraction=0.1, slice_bytes=SLICE_BYTES,
                         show_progress=False)
    assert result.complete
    return out


@pytest.fixture()
def s3_run(corpus_dir, small_tokenizer_dir, s3_bucket, ray_cluster):
    url = f"{s3_bucket}/runs/a"
    result = jobs.encode(str(corpus_dir), small_tokenizer_dir, url, val_fraction=0.1, slice_bytes=SLICE_BYTES,
                         show_progress=False)
    assert result.complete and result.out_dir == url
    return url, result


def test_encode_to_s3_is_byte_identical_to_local_and_inspect_verifies(s3_run, local_run):
    url, result = s3_run
    assert committed_shard_bytes(url) == shard_bytes(local_run)
    assert len(result.manifest.shards) == len(Manifest.read(local_run).shards) > 4
    # Every shard key is a per-attempt key, and the run left nothing uncommitted behind.
    assert all(re.fullmatch(r"(train|val)/shard-\d{5}-\d{4}\.[0-9a-f]{12}\.arrow", r["path"])
               for r in result.manifest.shards)
    files = storage.list_files(url)
    assert sorted(k for k in files if k.endswith(".arrow")) == sorted(r["path"] for r in result.manifest.shards)
    assert not any(k.startswith(".tokshard-write-check") for k in files)
    proc = run_tokshard("inspect", url, "--json")
    summary = json.loads(proc.stdout)
    assert summary["problems"] == [] and summary["uncommitted"] == []
    assert summary["totals"] == Manifest.read(local_run).totals()


def test_reading_shards_and_tokenizer_from_s3(s3_run, local_run):
    url, result = s3_run
    rec = result.manifest.shards[0]
    with ShardReader(storage.join(url, rec["path"]), sha256=rec["sha256"]) as remote, \
            ShardReader(local_run / ATTEMPT_SUFFIX.sub(".arrow", rec["path"])) as local:
        assert remote.ids == local.ids and (remote.tokens == local.tokens).all()
    tok = Tokenizer.load(storage.join(url, "tokenizer"))
    assert tok.sha256 == result.manifest.tokenizer["sha256"]
    # A replaced object is never served from the cache under the manifest's sha256.
    storage.write_bytes(storage.join(url, rec["path"]), b"not a shard")
    with pytest.raises(ValueError, match="sha256|not a readable"):
        ShardReader(storage.join(url, rec["path"]), sha256="0" * 64)


def test_resume_keeps_committed_slices_without_tasks_and_redoes_changed_ones(s3_run, corpus_dir,
                                                                              small_tokenizer_dir, local_run):
    url, first = s3_run
    n_slices = first.slices_encoded
    again = jobs.encode(str(corpus_dir), small_tokenizer_dir, url, val_fraction=0.1, slice_bytes=SLICE_BYTES,
                        show_progress=False)
    assert again.complete and again.slices_kept == n_slices and again.slices_encoded == 0
    assert [r["path"] for r in again.manifest.shards] == [r["path"] for r in first.manifest.shards]

    # A shard replaced behind tokshard's back (same size, other bytes: a new ETag) is noticed from the store's
    # metadata alone, and its slice is encoded again under a new attempt key.
    victim = first.manifest.shards[0]
    data = bytearray(storage.read_bytes(storage.join(url, victim["path"])))
    data[-1] ^= 0xFF
    storage.write_bytes(storage.join(url, victim["path"]), bytes(data))
    fixed = jobs.encode(str(corpus_dir), small_tokenizer_dir, url, val_fraction=0.1, slice_bytes=SLICE_BYTES,
                        show_progress=False)
    assert fixed.complete and fixed.slices_encoded == 1 and fixed.slices_kept == n_slices - 1
    assert victim["path"] not in {r["path"] for r in fixed.manifest.shards}
    assert committed_shard_bytes(url) == shard_bytes(local_run)
    assert not storage.exists(storage.join(url, victim["path"]))  # the replaced object was not committed: removed


def test_dead_attempts_objects_are_listed_by_inspect_and_removed_by_the_next_run(s3_run, corpus_dir,
                                                                                  small_tokenizer_dir):
    url, _ = s3_run
    dead = "train/shard-00000-0000.0123456789ab.arrow"  # what a worker killed before its commit leaves
    storage.write_bytes(storage.join(url, dead), b"half of a shard")
    summary = json.loads(run_tokshard("inspect", url, "--json").stdout)
    assert summary["uncommitted"] == [dead] and summary["problems"] == []
    text = run_tokshard("inspect", url).stdout
    assert "1 uncommitted object(s)" in text and dead in text
    jobs.encode(str(corpus_dir), small_tokenizer_dir, url, val_fraction=0.1, slice_bytes=SLICE_BYTES,
                show_progress=False)
    assert not storage.exists(storage.join(url, dead))


@pytest.mark.slow
def test_cli_run_and_encode_to_s3(s3_bucket, corpus_dir, tmp_path):
    """`tokshard run --out s3://…` trains, writes the tokenizer and the shards to the store; a second `run` reuses
    the tokenizer and keeps every slice; `inspect` verifies shards and tokenizer on the store."""
    url = f"{s3_bucket}/run"
    args = ["run", "--source", str(corpus_dir), "--out", url, "--vocab-size", "512", "--sample-bytes", "300000",
            "--slice-mb", "1", "--workers", "1", "--no-progress", "--json"]
    first = json.loads(run_tokshard(*args).stdout)
    assert first["complete"] and first["tokenizer"]["tokenizer"] == f"{url}/tokenizer"
    second = json.loads(run_tokshard(*args).stdout)
    assert second["tokenizer"]["reused"] and second["slices_kept"] == first["slices_encoded"] > 0
    assert json.loads(run_tokshard("inspect", url, "--json").stdout)["problems"] == []
    tok_summary = json.loads(run_tokshard("inspect", f"{url}/tokenizer", "--json").stdout)
    assert tok_summary["kind"] == "tokenizer" and tok_summary["sha256"] == first["tokenizer"]["sha256"]


@pytest.mark.parametrize("case", ["missing bucket", "unreachable endpoint", "no credentials"])
def test_unusable_store_is_refused_before_any_task(case, s3_server, corpus_dir, small_tokenizer_dir):
    env = {}
    url = "s3://tokshard-no-such-bucket/run"
    if case == "unreachable endpoint":
        url, env = "s3://any-bucket/run", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    elif case == "no credentials":
        env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
               "AWS_CONFIG_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}
    proc = run_tokshard("encode", "--source", str(corpus_dir), "--tokenizer", str(small_tokenizer_dir), "--out",
                        url, "--workers", "1", "--no-progress", check=False, env=env, timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    expected = {"missing bucket": "does not exist", "unreachable endpoint": "endpoint unreachable",
                "no credentials": "no credentials"}[case]
    assert expected in proc.stderr and "Started a local Ray instance" not in proc.stderr, proc.stderr[-2000:]


def test_train_tokenizer_to_s3_and_tokenizer_round_trip(s3_bucket, small_tokenizer):
    url = f"{s3_bucket}/tok"
    small_tokenizer.save(url)
    assert sorted(storage.list_files(url)) == sorted(TOKENIZER_FILES)
    loaded = Tokenizer.load(url)
    assert loaded.sha256 == small_tokenizer.sha256 and loaded.ranks == small_tokenizer.ranks
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(f"{s3_bucket}/nothing-here")
    assert s3fs.S3FileSystem().exists(url.removeprefix("s3://") + "/tokenizer.json")


def test_trainer_dataset_reads_from_s3(s3_run, local_run):
    """`tokshard train --data s3://…` opens the run through the manifest: shards come from the verified cache."""
    pytest.importorskip("torch")
    from tokshard.trainer.data import open_dataset

    url, _ = s3_run
    remote, local = open_dataset(url), open_dataset(local_run)
    try:
        assert remote.tokenizer_sha256 == local.tokenizer_sha256 and remote.complete
        for split in ("train", "val"):
            assert [r.tokens.tolist() for r in getattr(remote, split)] == \
                [r.tokens.tolist() for r in getattr(local, split)]
    finally:
        remote.close()
        local.close()


def test_train_on_a_run_in_s3(s3_run, tmp_path, one_torch_thread):
    """`tokshard train --data s3://…` trains (the URL is kept as given, not made into a local path) and records it."""
    pytest.importorskip("torch")
    from tokshard.trainer.train import TrainConfig, train

    url, _ = s3_run
    run = tmp_path / "run"
    summary = train(TrainConfig(data=url, out=str(run), preset="tiny", steps=2, batch_size=2, seq_len=32,
                                eval_every=2, eval_tokens=256), echo=lambda *a, **k: None)
    assert summary["finished"] and summary["step"] == 2
    assert json.loads((run / "config.json").read_text())["data"] == url
    assert (run / "tokenizer" / "tokenizer.json").is_file()


def test_serve_tokenizer_from_s3(s3_bucket, small_tokenizer):
    url = f"{s3_bucket}/serve-tok"
    small_tokenizer.save(url)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tokshard", "serve", "--tokenizer", url, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def info() -> dict | None:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=5) as r:
                    return json.loads(r.read())
            except OSError:
                return None

        served = wait_for(info, 120, "the service to answer /v1/info")
        assert served["tokenizer"]["sha256"] == small_tokenizer.sha256
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/tokenize", method="POST",
                                     data=json.dumps({"prompt": "Hello from the object store"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.loads(r.read())
        assert body["tokens"] == small_tokenizer.encode("Hello from the object store")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class DenyingProxy:
    """An HTTP proxy in front of the S3 server that answers AccessDenied to writes of keys containing `deny`
    (while it is set) and passes everything else through: a store that fails for one slice in the middle of a
    run, deterministically, with the real server behind it."""

    def __init__(self, upstream: str, deny: str) -> None:
        self.upstream, self.deny = upstream, deny
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the proxy did not start"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)

        async def start() -> None:
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._session = aiohttp.ClientSession(auto_decompress=False)

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.deny and request.method in ("PUT", "POST") and self.deny in request.path:
            return web.Response(status=403, content_type="application/xml", body=(
                b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                b"<Message>Access Denied</Message></Error>"))
        hop = {"host", "content-length", "transfer-encoding", "connection"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                         data=body) as r:
            data = await r.read()
            out = {k: v for k, v in r.headers.items() if k.lower() not in hop}
            if request.method == "HEAD":  # the object's size: what s3fs's info() reads
                out["Content-Length"] = r.headers.get("Content-Length", "0")
                return web.Response(status=r.status, headers=out)
            return web.Response(status=r.status, body=data, headers=out)

    def close(self) -> None:
        async def stop() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.mark.slow
def test_store_failing_mid_run_fails_that_slice_then_the_same_command_finishes(s3_server, s3_bucket, corpus_dir,
                                                                               small_tokenizer_dir, local_run):
    url = f"{s3_bucket}/flaky"
    proxy = DenyingProxy(s3_server, deny="shard-00001-0000")
    try:
        args = ["encode", "--source", str(corpus_dir), "--tokenizer", str(small_tokenizer_dir), "--out", url,
                "--val-fraction", "0.1", "--slice-mb", "1", "--workers", "1", "--no-progress", "--json"]
        env = {"AWS_ENDPOINT_URL": proxy.url, "AWS_MAX_ATTEMPTS": "2"}
        failed = run_tokshard(*args, check=False, env=env)
        assert failed.returncode == 1, failed.stderr[-3000:]
        summary = json.loads(failed.stdout)
        assert not summary["complete"] and len(summary["errors"]) == 1
        assert "part-01.parquet" in summary["errors"][0] and "denied" in summary["errors"][0].lower()
        assert Manifest.read(url).data["complete"] is False
        proxy.deny = ""  # the store works again: the same command finishes the run
        again = json.loads(run_tokshard(*args, env=env).stdout)
        assert again["complete"] and again["slices_encoded"] == 1 and again["slices_kept"] >= 2
    finally:
        proxy.close()
    ref = run_tokshard("encode", "--source", str(corpus_dir), "--tokenizer", str(small_tokenizer_dir), "--out",
                       str(local_run.parent / "mb1"), "--val-fraction", "0.1", "--slice-mb", "1", "--workers", "1",
                       "--no-progress")
    assert ref.returncode == 0
    assert committed_shard_bytes(url) == shard_bytes(local_run.parent / "mb1")
    assert json.loads(run_tokshard("inspect", url, "--json").stdout)["problems"] == []


def test_denied_write_is_refused_before_any_task(corpus_dir, small_tokenizer_dir):
    """A user whose IAM policy may read but not write the bucket (moto enforcing IAM after its first four
    requests, which create the bucket, the user, its key and its policy): exit 2 before any task."""
    import boto3

    port = free_port()
    server = start_moto_server(port, env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        endpoint = f"http://127.0.0.1:{port}"
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "admin",
                 "aws_secret_access_key": "admin"}
        boto3.client("s3", **admin).create_bucket(Bucket="read-only-bucket")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": "*"}]}))
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        proc = run_tokshard("encode", "--source", str(corpus_dir), "--tokenizer", str(small_tokenizer_dir), "--out",
                            "s3://read-only-bucket/run", "--workers", "1", "--no-progress", check=False, env=env)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "access denied" in proc.stderr and "Started a local Ray instance" not in proc.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- export, eval-tokenizer and mix over runs and tokenizers at URLs -------------------------------------------
def _export_files(dest: str) -> dict[str, bytes]:
    return {name: storage.read_bytes(storage.join(dest, name)) for name in sorted(storage.list_files(dest))}


@pytest.mark.parametrize("fmt", ["nanogpt", "megatron"])
def test_export_from_s3_to_s3_equals_export_of_the_local_run(fmt, s3_run, local_run, tmp_path):
    url, _ = s3_run
    remote = export.export(url, f"{url}-export", fmt, tokens_per_file=20_000)
    local = export.export(local_run, tmp_path / "export", fmt, tokens_per_file=20_000)
    remote_files, local_files = _export_files(f"{url}-export"), _export_files(str(tmp_path / "export"))
    assert sorted(remote_files) == sorted(local_files) and len(remote_files) > 3
    for name in local_files:
        if name != export.EXPORT_JSON:  # it names the source and dest
            assert remote_files[name] == local_files[name], name
    assert json.loads(remote_files[export.EXPORT_JSON]) == remote
    assert {k: v for k, v in remote.items() if k not in ("source", "dest", "data_prefix")} == \
        {k: v for k, v in local.items() if k not in ("source", "dest", "data_prefix")}
    with pytest.raises(ValueError, match="already holds"):
        export.export(url, f"{url}-export", fmt, tokens_per_file=20_000)


def test_export_to_a_missing_bucket_is_refused_and_a_failed_export_leaves_nothing(s3_run, s3_bucket, monkeypatch,
                                                                                   tmp_path):
    url, _ = s3_run
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))  # this test empties its cache
    with pytest.raises(storage.StorageError, match="does not exist"):
        export.export(url, "s3://no-such-bucket-tokshard/x", "nanogpt")
    dest = f"{s3_bucket}/half"
    # A shard object whose bytes differ from the manifest's sha256 is refused before anything is written.
    first = storage.join(url, Manifest.read(url).shards[0]["path"])
    good = storage.read_bytes(first)
    storage.write_bytes(first, good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ValueError, match="fails verification.*sha256"):
        export.export(url, dest, "nanogpt")
    assert storage.list_files(dest) == {}
    storage.write_bytes(first, good)
    # A shard that vanishes after the run was verified fails the export midway: the files written before it are
    # removed, so the same command can run again once the run is repaired.
    victim = storage.join(url, [r for r in Manifest.read(url).shards if r["split"] == "train"][-1]["path"])
    split_streams = export._split_streams

    def then_vanish(*args: object):
        got = split_streams(*args)
        storage.remove([victim])
        shutil.rmtree(storage.cache_dir())  # and its verified copy is gone from the cache too
        return got

    removed: list[str] = []
    remove = export._Written.remove

    def remove_and_record(self: export._Written) -> None:
        removed.extend(self.paths)
        remove(self)

    monkeypatch.setattr(export, "_split_streams", then_vanish)
    monkeypatch.setattr(export._Written, "remove", remove_and_record)
    with pytest.raises(ValueError, match="not found"):  # the last train shard: val and most train files came first
        export.export(url, dest, "nanogpt", tokens_per_file=20_000)
    assert len(removed) > 3 and storage.list_files(dest) == {}  # files had been written, and are gone


def test_eval_tokenizer_with_s3_tokenizers_and_text_gives_the_local_numbers(s3_bucket, small_tokenizer_dir,
                                                                            corpus_dir, tmp_path):
    tok_url, json_url = f"{s3_bucket}/tok/tokenizer", f"{s3_bucket}/hf/tokenizer.json"
    Tokenizer.load(small_tokenizer_dir).save(tok_url)
    storage.write_bytes(json_url, (small_tokenizer_dir / "tokenizer.json").read_bytes())
    parquet = sorted(corpus_dir.glob("*.parquet"))[0]
    text_url = f"{s3_bucket}/text/{parquet.name}"
    storage.write_bytes(text_url, parquet.read_bytes())
    options = {"limit_docs": 200, "repeats": 1}
    local = evaluate.run([str(small_tokenizer_dir), str(small_tokenizer_dir / "tokenizer.json")], tmp_path / "a",
                         source=str(parquet), **options)
    remote = evaluate.run([tok_url, json_url], tmp_path / "b", source=text_url, **options)

    def numbers(report: dict) -> list[dict]:
        return [{k: v for k, v in t.items() if k not in ("name", "path", "throughput", "engine")}
                for t in report["tokenizers"]]

    assert numbers(remote) == numbers(local)
    assert [t["kind"] for t in remote["tokenizers"]] == ["tokshard", "tokenizer.json"]
    assert [t["path"] for t in remote["tokenizers"]] == [tok_url, json_url]
    assert remote["source"]["documents"] == local["source"]["documents"] == 200
    cli = json.loads(run_tokshard("eval-tokenizer", tok_url, json_url, "--source", text_url, "--out",
                                  str(tmp_path / "cli"), "--limit-docs", "200", "--repeats", "1", "--json").stdout)
    assert numbers(cli) == numbers(local)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate.run([f"{s3_bucket}/nothing-here"], tmp_path / "c", **options)


def test_mix_over_an_s3_run_equals_the_plan_over_the_local_run(s3_run, local_run, s3_bucket, tmp_path):
    url, _ = s3_run
    run_tokshard("mix", f"web={url}:1", "--tokens", "30000", "--seq-len", "128", "--out", f"{s3_bucket}/plan")
    run_tokshard("mix", f"web={local_run}:1", "--tokens", "30000", "--seq-len", "128", "--out", str(tmp_path / "plan"))
    remote, local = mix.read_plan(f"{s3_bucket}/plan"), mix.read_plan(tmp_path / "plan")
    assert remote.rows == local.rows > 0
    for name in (mix.SEGMENTS_NPY, mix.ROWS_NPY):
        assert storage.read_bytes(f"{s3_bucket}/plan/{name}") == (tmp_path / "plan" / name).read_bytes()

    def described(plan: mix.Plan) -> dict:
        sources = [{**s, "run": None, "shards": [{**sh, "path": ATTEMPT_SUFFIX.sub(".arrow", sh["path"])}
                                                 for sh in s["shards"]]} for s in plan.data["sources"]]
        return {**plan.data, "sources": sources}

    assert described(remote) == described(local)
    assert mix.check_sources(remote.data) == []
    # The plan at its URL exports the same rows to a URL as the local plan does to a directory.
    summary = json.loads(run_tokshard("export", "--format", "megatron", f"{s3_bucket}/plan", f"{s3_bucket}/megatron",
                                      "--json").stdout)
    assert summary["data_prefix"]["train"] == f"{s3_bucket}/megatron/train"
    export.export(tmp_path / "plan", tmp_path / "from-local", "megatron")
    for name in ("train.bin", "train.idx", "val.bin", "val.idx"):
        assert storage.read_bytes(f"{s3_bucket}/megatron/{name}") == (tmp_path / "from-local" / name).read_bytes()
