"""Tokenizers and shards on a real GCS-compatible server: fake-gcs-server on loopback (conftest's `gcs_server`),
reached by gcsfs through STORAGE_EMULATOR_HOST, the way a user points tokshard at an emulator (`gcs_env`).

What test_s3.py checks on S3, on the other store tokshard supports: `tokshard encode --out gs://…` writes the
shards of a local run byte for byte and `inspect` verifies them, a tokenizer trained to gs:// is the local one and
encodes from there, resume keeps committed slices from the store's metadata alone (GCS's md5), and what a dead
attempt left is listed by `inspect` and removed by the next run. Every command here runs in process (a small
source needs no Ray), so the module stays fast; the Ray-worker run is marked slow.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest

from tests.conftest import committed_shard_bytes, create_gcs_bucket, run_tokshard, shard_bytes
from tokshard.pipeline import sources, storage
from tokshard.pipeline.manifest import Manifest
from tokshard.pipeline.tokenizer import TOKENIZER_FILES, Tokenizer

SAMPLE = sources.bundled_sample()  # ~4 MB of text: 3 slices of 1 MiB, 6 shards with the validation split
TRAIN = ("--source", SAMPLE, "--vocab-size", "512", "--sample-bytes", "300000", "--no-progress", "--json")
ENCODE = ("--source", SAMPLE, "--slice-mb", "1", "--val-fraction", "0.1", "--no-progress", "--json")
DEAD = "train/shard-00000-0000.0123456789ab.arrow"  # what a worker killed before its commit leaves


def _md5_base64(data: bytes) -> str:
    """An object's MD5 as GCS reports it (md5Hash)."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The bundled sample's tokenizer and shards, made by the CLI in a local directory: the reference."""
    d = tmp_path_factory.mktemp("gcs-reference")
    run_tokshard("train-tokenizer", "--out", str(d / "tokenizer"), *TRAIN)
    run_tokshard("encode", "--tokenizer", str(d / "tokenizer"), "--out", str(d / "run"), *ENCODE)
    return d


@pytest.fixture(scope="module")
def gcs_run(gcs_env, local_run):
    """The same commands with gs:// URLs: the tokenizer trained to the store, then read from it by encode."""
    bucket = create_gcs_bucket(gcs_env)
    tok, out = f"{bucket}/tokenizer", f"{bucket}/run"
    trained = json.loads(run_tokshard("train-tokenizer", "--out", tok, *TRAIN).stdout)
    encoded = json.loads(run_tokshard("encode", "--tokenizer", tok, "--out", out, *ENCODE).stdout)
    assert encoded["complete"] and encoded["slices_encoded"] >= 3 and encoded["out"] == out
    return {"tok": tok, "out": out, "trained": trained, "encoded": encoded}


def test_encode_to_gcs_is_byte_identical_to_local_and_inspect_verifies(gcs_run, local_run):
    out = gcs_run["out"]
    assert committed_shard_bytes(out) == shard_bytes(local_run / "run")
    records = Manifest.read(out).shards
    assert len(records) == len(Manifest.read(local_run / "run").shards) >= 6
    # Per-attempt keys, each committed by its slice record, and nothing else left in the split prefixes.
    assert all(re.fullmatch(r"(train|val)/shard-\d{5}-\d{4}\.[0-9a-f]{12}\.arrow", r["path"]) for r in records)
    files = storage.list_files(out)
    assert sorted(k for k in files if k.endswith(".arrow")) == sorted(r["path"] for r in records)
    assert not any(".tokshard-write-check" in k for k in files)
    summary = json.loads(run_tokshard("inspect", out, "--json").stdout)
    assert summary["problems"] == [] and summary["uncommitted"] == []
    assert summary["totals"] == Manifest.read(local_run / "run").totals()


def test_the_change_tag_on_gcs_is_the_content_md5(gcs_run):
    """Resume compares each shard's recorded tag with what GCS reports: the md5Hash of the bytes, recorded right
    after the write. Not GCS's `etag`, which the JSON API also changes for a metadata-only update (a new
    metageneration; fake-gcs-server does not model that, so the update is applied to its real answer here)."""
    out = gcs_run["out"]
    for rec in Manifest.read(out).shards:
        found = storage.info(storage.join(out, rec["path"]))
        assert rec["stored"] == found["md5Hash"] == _md5_base64(storage.read_bytes(storage.join(out, rec["path"])))
        assert storage.stored_tag({**found, "etag": "CLDv6Z/8sYkDEAI=", "metageneration": "2"}) == rec["stored"]


def test_tokenizer_trained_to_gcs_is_the_local_one_and_loads_from_it(gcs_run, local_run):
    tok = gcs_run["tok"]
    local = Tokenizer.load(local_run / "tokenizer")
    assert gcs_run["trained"]["tokenizer"] == tok and gcs_run["trained"]["sha256"] == local.sha256
    assert sorted(storage.list_files(tok)) == sorted(TOKENIZER_FILES)
    loaded = Tokenizer.load(tok)
    assert loaded.sha256 == local.sha256 and loaded.ranks == local.ranks
    assert loaded.encode("Tokens on object storage") == local.encode("Tokens on object storage")
    assert Manifest.read(gcs_run["out"]).tokenizer["sha256"] == local.sha256  # what encode read from gs://
    summary = json.loads(run_tokshard("inspect", tok, "--json").stdout)
    assert summary["kind"] == "tokenizer" and summary["sha256"] == local.sha256


def test_resume_keeps_every_slice_and_removes_a_dead_attempts_object(gcs_run, local_run):
    out, first = gcs_run["out"], gcs_run["encoded"]
    storage.write_bytes(storage.join(out, DEAD), b"half of a shard")
    summary = json.loads(run_tokshard("inspect", out, "--json").stdout)
    assert summary["uncommitted"] == [DEAD] and summary["problems"] == []
    text = run_tokshard("inspect", out).stdout
    assert "1 uncommitted object(s)" in text and DEAD in text
    paths = [r["path"] for r in Manifest.read(out).shards]

    again = json.loads(run_tokshard("encode", "--tokenizer", gcs_run["tok"], "--out", out, *ENCODE).stdout)
    assert again["complete"] and again["slices_encoded"] == 0 and again["slices_kept"] == first["slices_encoded"]
    assert [r["path"] for r in Manifest.read(out).shards] == paths
    assert not storage.exists(storage.join(out, DEAD))
    assert json.loads(run_tokshard("inspect", out, "--json").stdout)["uncommitted"] == []
    assert committed_shard_bytes(out) == shard_bytes(local_run / "run")


def test_a_replaced_shard_is_noticed_from_its_md5_and_encoded_again(gcs_run, local_run):
    """Same size, other bytes (another writer, a bad copy): the resume check sees another md5 without reading the
    shard, encodes that slice again under a new key, and deletes the replaced object."""
    out = gcs_run["out"]
    victim = Manifest.read(out).shards[0]
    data = bytearray(storage.read_bytes(storage.join(out, victim["path"])))
    data[-1] ^= 0xFF
    storage.write_bytes(storage.join(out, victim["path"]), bytes(data))
    fixed = json.loads(run_tokshard("encode", "--tokenizer", gcs_run["tok"], "--out", out, *ENCODE).stdout)
    assert fixed["complete"] and fixed["slices_encoded"] == 1
    assert fixed["slices_kept"] == gcs_run["encoded"]["slices_encoded"] - 1
    assert victim["path"] not in {r["path"] for r in Manifest.read(out).shards}
    assert not storage.exists(storage.join(out, victim["path"]))
    assert committed_shard_bytes(out) == shard_bytes(local_run / "run")


def test_gcsfs_default_layer_reads_the_run_too(gcs_run):
    """gcsfs's default (its zonal/HNS layer on, as for a user who sets only STORAGE_EMULATOR_HOST) falls back to
    the same JSON API against an emulator: `inspect` still reads and verifies every shard."""
    proc = run_tokshard("inspect", gcs_run["out"], "--json", env={"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "true"})
    assert json.loads(proc.stdout)["problems"] == []


def test_missing_bucket_is_refused_before_any_task(gcs_env, local_run):
    proc = run_tokshard("encode", "--tokenizer", str(local_run / "tokenizer"), "--out", "gs://tokshard-no-such/run",
                        *ENCODE, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "bucket 'tokshard-no-such' does not exist" in proc.stderr


@pytest.mark.slow
def test_unreachable_endpoint_is_refused_naming_the_gcs_setting(gcs_env, local_run):
    """gcsfs retries a refused connection for about 30 s before tokshard can say so: slow."""
    proc = run_tokshard("encode", "--tokenizer", str(local_run / "tokenizer"), "--out", "gs://any-bucket/run",
                        *ENCODE, check=False, env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}, timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "endpoint unreachable" in proc.stderr and "STORAGE_EMULATOR_HOST" in proc.stderr
    assert "AWS_ENDPOINT_URL" not in proc.stderr


def test_a_request_without_credentials_is_said_so_with_the_gcs_settings():
    """What GCS answers a request that carried no credentials (gcsfs falls back to anonymous): an HTTP 401 whose
    message is the only sign of the cause. The emulator accepts anonymous requests, so GCS's answer is built here."""
    from gcsfs.retry import HttpError

    answer = HttpError({"code": 401, "message": "Anonymous caller does not have storage.objects.create access to "
                        "the Google Cloud Storage object. Permission 'storage.objects.create' denied on resource "
                        "(or it may not exist)."})
    message = str(storage._store_error("gs://bucket/run", answer))
    assert "no credentials" in message and "GOOGLE_APPLICATION_CREDENTIALS" in message and "AWS" not in message


@pytest.mark.slow
def test_ray_workers_write_to_gcs_byte_identical(gcs_env, local_run):
    """With Ray (a local instance the command starts), the workers -- other processes -- write the shards
    straight to the store, reaching it through the environment they inherit."""
    out = f"{create_gcs_bucket(gcs_env)}/ray-run"
    summary = json.loads(run_tokshard("encode", "--tokenizer", str(local_run / "tokenizer"), "--out", out, *ENCODE,
                                      "--no-in-process", "--workers", "2").stdout)
    assert summary["complete"] and summary["executor"] == "ray"
    assert committed_shard_bytes(out) == shard_bytes(local_run / "run")
    assert json.loads(run_tokshard("inspect", out, "--json").stdout)["problems"] == []
