"""Shared fixtures: a small tokenizer trained on the bundled sample, real parquet corpora, a real local Ray."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Ray 2.60 turns token auth on after a local init unless told otherwise; keep its files under a private tmp dir.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="tokshard-ray-"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from pipeline import sources
from pipeline.tokenizer import Tokenizer

SHARED_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def sample_texts(limit: int | None = None) -> list[str]:
    texts = pq.read_table(sources.bundled_sample(), columns=["text"]).column("text").to_pylist()
    return texts[:limit] if limit else texts


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
    from pipeline import jobs

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    jobs.train_tokenizer(None, out, vocab_size=2048, sample_bytes=2_000_000)
    return out


@pytest.fixture(scope="session")
def small_tokenizer(small_tokenizer_dir) -> Tokenizer:
    return Tokenizer.load(small_tokenizer_dir)


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
