"""Where tokshard's bytes live: a local directory or an object store (`s3://`, `gs://`, `memory://`, any fsspec
URL), behind one small interface with the same guarantees on both.

A local disk has rename, so a file is written to a temporary name, fsynced and renamed (pipeline/atomic.py). An
object store has no rename, but a single PUT (or a completed multipart upload) is atomic: an object is either
absent or whole. Two attempts at the same slice (a task Ray retried while the first attempt's worker was still
writing) could still interleave their objects, so on a store every attempt writes its shards under its own key
(`shard-00000-0001.<attempt>.arrow`, see `attempt_name`) and the slice record written after them -- one PUT --
is the commit: readers trust only the keys a committed record (and then the manifest) names, and the encode
driver deletes what dead attempts left behind at the end of a run (`uncommitted`).

Each written object's size and what the store says about it right after the write (`stored_tag`: the ETag on S3,
the md5 on GCS, the mtime on a local disk) are recorded, so a resumed run can keep a finished slice by
asking the store for the object's metadata instead of reading it back. `inspect` still reads every byte and
checks sha256s.

Readers that need a real file (the memory-mapped `ShardReader`, the tokenizer) get one from `local_file` /
`local_dir`: the local path itself, or a copy in a cache directory (`TOKSHARD_CACHE`, default
`~/.cache/tokshard`), verified against its sha256 when one is known.

Credentials and endpoints come from each filesystem's own configuration (for s3fs: the standard AWS environment
variables and config files, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` included; for gcsfs: Google's application
default credentials, and `STORAGE_EMULATOR_HOST` for an emulator).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tokshard.pipeline import atomic

CACHE_ENV = "TOKSHARD_CACHE"
_CHUNK = 8 << 20
# What a filesystem reports about an object that changes whenever its bytes do, by preference: S3's ETag (an MD5
# of the content, or of its parts), GCS's md5Hash (the content's MD5), and a local file's modification time in
# nanoseconds. GCS's own `etag` comes after md5Hash: Google documents it as opaque, and on GCS's JSON API it also
# changes when only the object's metadata does (its metageneration), which would make resume re-encode an unchanged
# shard. It is the fallback for an object without md5Hash (a composed one), before the 32-bit crc32c.
_TAG_KEYS = ("ETag", "md5Hash", "etag", "crc32c", "mtime_ns")


class StorageError(ValueError):
    """A store that cannot be used (unreachable endpoint, missing bucket or credentials, denied write), said so
    with the URL and what to check."""


def is_url(path: str | os.PathLike[str]) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """`base/part/...` for a local path or a URL (pathlib would turn `s3://b` into `s3:/b`)."""
    text = str(base)
    if not is_url(text):
        return os.path.join(text.removeprefix("file://"), *parts)
    return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])


def display(path: str | os.PathLike[str]) -> str:
    """A local path made absolute; a URL as given."""
    return str(path) if is_url(path) else str(Path(str(path).removeprefix("file://")).absolute())


def filesystem(path: str | os.PathLike[str], listings_cache: bool = True) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a local path or URL; a clear error when the scheme's package is
    missing.

    `listings_cache=False`, what this module's own calls use, gives a filesystem that never answers from an
    earlier listing. s3fs and gcsfs remember every listing a process made and answer `info` / `exists` / the size
    `open` reads from it, so once another process (a Ray worker, another tokshard command) replaced or deleted an
    object, a long-lived process would still see the old size and tag: resume would keep a slice whose shard was
    replaced, and a deleted dead attempt would still exist. Sources keep the cache: their files do not change under
    a run, and a listing of hf:// answers many questions that would each be a request."""
    import fsspec

    text = str(path)
    if not is_url(text):
        return fsspec.filesystem("file"), str(Path(text.removeprefix("file://")).absolute())
    try:
        fs, inner = fsspec.core.url_to_fs(text, **({} if listings_cache else {"use_listings_cache": False}))
    except (ImportError, ValueError) as e:
        scheme = text.split("://", 1)[0]
        extra = {"s3": " (pip install 'tokshard[s3]')", "gs": " (pip install 'tokshard[gcs]')",
                 "gcs": " (pip install 'tokshard[gcs]')"}.get(scheme, "")
        raise StorageError(f"cannot open {text}: {e}. Install the filesystem package for {scheme}://{extra}") from e
    return fs, inner


def _fresh_filesystem(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """`filesystem` without the listings cache: what this module's reads, listings, writes and deletes use."""
    return filesystem(path, listings_cache=False)


# -- reading ----------------------------------------------------------------------------------------------
def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole object/file; FileNotFoundError names it when absent."""
    if not is_url(path):
        with open(str(path).removeprefix("file://"), "rb") as f:
            return f.read()
    fs, inner = _fresh_filesystem(path)
    try:
        return fs.cat_file(inner)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except Exception as e:
        raise _store_error(str(path), e) from e


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(read_bytes(path))


def info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Size and change tag of an object/file, or None when it does not exist."""
    if not is_url(path):
        try:
            st = os.stat(str(path).removeprefix("file://"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return {"size": st.st_size, "mtime_ns": str(st.st_mtime_ns), "type": "file"}
    fs, inner = _fresh_filesystem(path)
    try:
        found = fs.info(inner)
    except FileNotFoundError:
        return None
    return found if found.get("type") != "directory" else None


def exists(path: str | os.PathLike[str]) -> bool:
    return info(path) is not None


def stored_tag(found: dict[str, Any]) -> str:
    """What the store reports that changes with an object's bytes ('' when it reports nothing usable)."""
    for key in _TAG_KEYS:
        if found.get(key):
            return str(found[key]).strip('"')
    return ""


def list_files(directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every object/file under `directory` (recursively), by path relative to it, with its info."""
    if not is_url(directory):
        return _list_local(str(directory).removeprefix("file://"), "")
    fs, inner = _fresh_filesystem(directory)
    inner = inner.rstrip("/")
    try:
        found = fs.find(inner, detail=True)
    except FileNotFoundError:
        return {}
    return {k[len(inner) + 1:]: v for k, v in found.items() if v.get("type") != "directory" and k != inner}


def _list_local(root: str, prefix: str) -> dict[str, dict[str, Any]]:
    """os.scandir, not pathlib: a 100,000-file directory lists in a fraction of the time (no Path per entry)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            out.update(_list_local(entry.path, f"{prefix}{entry.name}/"))
        elif entry.is_file():
            st = entry.stat()
            out[prefix + entry.name] = {"size": st.st_size, "mtime_ns": str(st.st_mtime_ns)}
    return out


def sha256_of(path: str | os.PathLike[str]) -> str:
    """sha256 of an object/file, streamed (never the whole object in memory)."""
    digest = hashlib.sha256()
    if not is_url(path):
        with open(str(path).removeprefix("file://"), "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()
    fs, inner = _fresh_filesystem(path)
    with fs.open(inner, "rb", block_size=_CHUNK) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- writing ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write one file/object so that it exists whole or not at all.

    Local: a temporary sibling, fsynced and renamed. Object store: streamed (multipart above the filesystem's block
    size); the store makes the object visible only when the upload completes, and an exception aborts it."""
    if not is_url(path):
        with atomic.atomic_open(str(path).removeprefix("file://"), "wb") as f:
            yield f
        return
    fs, inner = _fresh_filesystem(path)
    try:
        f = fs.open(inner, "wb")
    except Exception as e:
        raise _store_error(str(path), e) from e
    try:
        yield f
    except BaseException:
        # fsspec's __exit__ would *complete* the upload; abort it instead (s3fs: abort the multipart upload).
        with contextlib.suppress(Exception):
            if hasattr(f, "discard"):  # s3fs, gcsfs: abort the upload
                f.discard()
                if "memory" in fs.protocol:  # fsspec's memory filesystem lists a file from open(); drop it
                    fs.rm(inner)
                else:
                    f.closed = True  # else the file's __del__ would try to upload what was discarded
            else:  # a filesystem that can only complete a write: complete it, then delete what it wrote
                f.close()
                fs.rm(inner)
        raise
    f.close()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with open_write(path) as f:
        f.write(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def remove(paths: Iterable[str]) -> int:
    """Delete files/objects (missing ones are fine); returns how many were asked for."""
    paths = list(paths)
    local = [p for p in paths if not is_url(p)]
    for p in local:
        Path(p).unlink(missing_ok=True)
    remote = [p for p in paths if is_url(p)]
    if remote:
        fs, _ = _fresh_filesystem(remote[0])
        inner = [_fresh_filesystem(p)[1] for p in remote]
        try:
            fs.rm(inner)  # one batched request on S3 (up to 1,000 keys each)
        except FileNotFoundError:  # filesystems that refuse to delete what is not there: one at a time
            for p in inner:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm(p)
    return len(paths)


def makedirs(directory: str | os.PathLike[str]) -> None:
    """A local directory is created; object stores have no directories (a prefix exists once a key has it)."""
    if not is_url(directory):
        Path(str(directory).removeprefix("file://")).mkdir(parents=True, exist_ok=True)


def attempt_name(base: str | os.PathLike[str], rel: str) -> str:
    """The name one attempt writes `rel` under. Local: `rel` itself (the rename commits). Object store: a fresh
    per-attempt key, `shard-X.arrow` -> `shard-X.<12 hex>.arrow`, committed by the slice record that names it."""
    if not is_url(base):
        return rel
    stem, dot, suffix = rel.rpartition(".")
    return f"{stem}.{uuid.uuid4().hex[:12]}.{suffix}" if dot else f"{rel}.{uuid.uuid4().hex[:12]}"


# -- checks before a run ------------------------------------------------------------------------------------
def check_writable(directory: str | os.PathLike[str]) -> None:
    """Prove `directory` can be written before any task starts: write and delete a small probe object. Raises
    StorageError saying what is wrong (no such bucket, no credentials, access denied, endpoint unreachable)."""
    if not is_url(directory):
        makedirs(directory)
        return
    probe = join(directory, f".tokshard-write-check-{uuid.uuid4().hex[:12]}")
    try:
        write_bytes(probe, b"ok")
        remove([probe])
    except StorageError:
        raise
    except Exception as e:
        raise _store_error(str(directory), e) from e


# Where each store's client reads its credentials and its endpoint, named in the errors below.
_S3_CONFIG = ("set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
              "AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 (for an S3-compatible store)")
_GCS_CONFIG = ("set GOOGLE_APPLICATION_CREDENTIALS to a service-account key, or run `gcloud auth "
               "application-default login` (on GCE/GKE: the instance's service account)",
               "STORAGE_EMULATOR_HOST (for an emulator)")
_STORE_CONFIG = {"s3": _S3_CONFIG, "s3a": _S3_CONFIG, "gs": _GCS_CONFIG, "gcs": _GCS_CONFIG}


def _store_error(url: str, exc: BaseException) -> StorageError:
    """A user-facing message for what fsspec filesystems raise: their types differ per package, their names and
    messages are what tell the cases apart."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    scheme, _, rest = url.partition("://")
    bucket = rest.split("/", 1)[0]
    credentials, endpoint = _STORE_CONFIG.get(scheme, ("use the filesystem's usual configuration",
                                                       "the filesystem's endpoint configuration"))
    if "nosuchbucket" in low or ("bucket" in low and "not exist" in low) or isinstance(exc, FileNotFoundError):
        hint = f"bucket {bucket!r} does not exist (create it, or fix the URL)"
    # "anonymous caller": GCS answering a request that carried no credentials (gcsfs falls back to anonymous).
    elif "credential" in low or "unable to locate" in low or "anonymous caller" in low:
        hint = f"no credentials: {credentials}"
    elif "accessdenied" in low or "access denied" in low or "forbidden" in low or isinstance(exc, PermissionError):
        hint = "access denied: the credentials in use may not write there (check the bucket policy / IAM role)"
    elif "connect" in low or "endpoint" in low or "timeout" in low or "name resolution" in low:
        hint = f"endpoint unreachable: check the network and {endpoint}"
    else:
        hint = "check the URL, the network and the credentials"
    return StorageError(f"cannot use {url}: {hint} ({text.splitlines()[0][:300]})")


# -- local copies for readers that need a file -------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tokshard")


def local_file(path: str | os.PathLike[str], sha256: str | None = None) -> Path:
    """A local file with the bytes of `path`: the path itself when local, else a cached copy. With `sha256` the
    copy is keyed by it and verified after download (a mismatch is an error, never a silently wrong file);
    without, it is keyed by the URL and the store's size and change tag, so a replaced object is fetched again."""
    if not is_url(path):
        return Path(str(path).removeprefix("file://"))
    found = info(path)
    if found is None:
        raise FileNotFoundError(f"{path} not found")
    return _cached_copy(str(path), found, sha256)


def _cached_copy(path: str, found: dict[str, Any], sha256: str | None) -> Path:
    """`local_file` once the store's info of `path` is known (callers that listed it already pass it on)."""
    key = sha256 or hashlib.sha256(f"{path}\0{found.get('size')}\0{stored_tag(found)}".encode()).hexdigest()
    dest = cache_dir() / "objects" / key[:2] / f"{key}{Path(str(path)).suffix}"
    if dest.is_file():
        return dest
    fs, inner = _fresh_filesystem(path)
    digest = hashlib.sha256()
    with atomic.atomic_open(dest, "wb") as out, fs.open(inner, "rb", block_size=_CHUNK) as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        if sha256 and digest.hexdigest() != sha256:
            raise ValueError(f"{path}: sha256 {digest.hexdigest()[:12]}… differs from the recorded {sha256[:12]}… "
                             "(object corrupted or replaced)")
    return dest


def local_dir(directory: str | os.PathLike[str], names: Iterable[str]) -> Path:
    """A local directory holding the files `names` of `directory` (those that exist): the directory itself when
    local, else cached copies linked into a directory keyed by the objects' URLs and tags."""
    if not is_url(directory):
        return Path(str(directory).removeprefix("file://"))
    present = {n: f for n in names if (f := info(join(directory, n))) is not None}
    if not present:
        raise FileNotFoundError(f"{directory} holds none of {', '.join(names)}")
    key = hashlib.sha256(json.dumps([str(directory), sorted((n, f.get("size"), stored_tag(f))
                                                            for n, f in present.items())]).encode()).hexdigest()
    dest = cache_dir() / "dirs" / key
    for name, found in present.items():
        target = dest / name
        if not target.is_file():
            atomic.write_bytes(target, _cached_copy(join(directory, name), found, None).read_bytes())
    return dest


def upload_dir(local: Path, directory: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Copy the files `names` of a local directory to `directory` (local or URL), one whole object each, in the
    given order: put the file that describes the others last."""
    for name in names:
        if (local / name).is_file():
            write_bytes(join(directory, name), (local / name).read_bytes())
