"""Build tokshard's bundled sample corpus (pipeline/data/sample.parquet) from Debian packages.

`tokshard run` with no --source, the README's quickstart and the tests need a few MB of real, freely licensed
text that ships with the repository. This script downloads a fixed list of Debian documentation packages with
`apt-get download`, extracts their plain-text documents, cuts them into documents of a few KB, shuffles them with a
fixed seed, and writes parquet in fineweb-edu's columns. Re-running it with the same package versions gives the
same bytes (no timestamps, fixed seed, ids derived from content position).

    python scripts/build_sample.py [--out pipeline/data/sample.parquet] [--target-bytes 5000000]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import random
import re
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20261122
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Part:
    """One text source inside a package: which files, which language, how many bytes of it to keep."""

    package: str
    glob: str
    language: str
    max_bytes: int
    kind: str  # "text" (paragraphs), "fortune" (%-separated), "html"


PARTS = [
    Part("debian-reference-en", "usr/share/debian-reference/debian-reference.en.txt.gz", "en", 900_000, "text"),
    Part("debian-reference-fr", "usr/share/debian-reference/debian-reference.fr.txt.gz", "fr", 300_000, "text"),
    Part("debian-reference-de", "usr/share/debian-reference/debian-reference.de.txt.gz", "de", 300_000, "text"),
    Part("debian-reference-ja", "usr/share/debian-reference/debian-reference.ja.txt.gz", "ja", 300_000, "text"),
    Part("debian-reference-zh-cn", "usr/share/debian-reference/debian-reference.zh-cn.txt.gz", "zh", 300_000,
         "text"),
    Part("debian-policy", "usr/share/doc/debian-policy/*.txt.gz", "en", 900_000, "text"),
    Part("gnu-standards", "usr/share/doc/gnu-standards/*.html", "en", 700_000, "html"),
    Part("fortunes", "usr/share/games/fortunes/*.u8", "en", 1_000_000, "fortune"),
    Part("fortunes-min", "usr/share/games/fortunes/*.u8", "en", 300_000, "fortune"),
]


class _TextOnly(html.parser.HTMLParser):
    """Collects visible text from HTML, one paragraph per block element."""

    BLOCKS = frozenset({"p", "div", "pre", "li", "h1", "h2", "h3", "h4", "h5", "dt", "dd", "tr", "br", "table",
                        "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(raw: str) -> str:
    parser = _TextOnly()
    parser.feed(raw)
    text = "".join(parser.parts)
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+\n", "\n", text)).strip()


def download(packages: list[str], into: Path) -> dict[str, tuple[Path, str]]:
    """apt-get download each package; return {package: (extracted root, version)}."""
    subprocess.run(["apt-get", "download", "-q", *packages], cwd=into, check=True, capture_output=True)
    out = {}
    for pkg in packages:
        (deb,) = into.glob(f"{pkg}_*.deb")
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        root = into / pkg
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        out[pkg] = (root, version)
    return out


def read_text(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n")


def chunk(units: list[str], rng: random.Random, sep: str) -> Iterator[str]:
    """Group consecutive units (paragraphs, fortunes) into documents of 0.3-6 KB."""
    doc: list[str] = []
    size, target = 0, rng.randint(300, 6_000)
    for u in units:
        doc.append(u)
        size += len(u.encode())
        if size >= target:
            yield sep.join(doc)
            doc, size, target = [], 0, rng.randint(300, 6_000)
    if doc:
        yield sep.join(doc)


def documents(part: Part, root: Path, rng: random.Random) -> Iterator[tuple[str, str]]:
    """(path inside package, document text) for one part, up to part.max_bytes of text."""
    used = 0
    for path in sorted(root.glob(part.glob)):
        text = read_text(path)
        if part.kind == "html":
            text = html_to_text(text)
        if part.kind == "fortune":
            units = [u.strip("\n") for u in text.split("\n%\n") if u.strip()]
            sep = "\n\n"
        else:
            units = [u for u in re.split(r"\n\s*\n", text) if u.strip()]
            sep = "\n\n"
        for doc in chunk(units, rng, sep):
            if used >= part.max_bytes:
                return
            used += len(doc.encode())
            yield str(path.relative_to(root)), doc


def build(out: Path, target_bytes: int) -> dict:
    rng = random.Random(SEED)
    scale = target_bytes / sum(p.max_bytes for p in PARTS)
    rows: list[dict] = []
    stats: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pkgs = download(sorted({p.package for p in PARTS}), Path(tmp))
        for part in PARTS:
            root, version = pkgs[part.package]
            scaled = Part(part.package, part.glob, part.language, int(part.max_bytes * scale), part.kind)
            for i, (inner, text) in enumerate(documents(scaled, root, rng)):
                key = f"{part.package}/{inner}/{i}"
                rows.append({
                    "text": text,
                    "id": f"<urn:uuid:{uuid.UUID(bytes=hashlib.sha1(key.encode()).digest()[:16])}>",
                    "dump": "debian-bookworm",
                    "url": f"deb://{part.package}/{inner}#{i}",
                    "file_path": f"{part.package}_{version}_all.deb",
                    "language": part.language,
                })
                s = stats.setdefault(part.package, {"version": version, "documents": 0, "bytes": 0})
                s["documents"] += 1
                s["bytes"] += len(text.encode())
    rng.shuffle(rows)
    n = len(rows)
    table = pa.table({
        "text": pa.array([r["text"] for r in rows], pa.string()),
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "dump": pa.array([r["dump"] for r in rows], pa.string()),
        "url": pa.array([r["url"] for r in rows], pa.string()),
        "file_path": pa.array([r["file_path"] for r in rows], pa.string()),
        "language": pa.array([r["language"] for r in rows], pa.string()),
        "language_score": pa.nulls(n, pa.float64()),
        "token_count": pa.nulls(n, pa.int64()),
        "score": pa.nulls(n, pa.float64()),
        "int_score": pa.nulls(n, pa.int64()),
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out, compression="zstd", row_group_size=256, store_schema=False)
    return {"documents": n, "text_bytes": sum(s["bytes"] for s in stats.values()), "packages": stats,
            "file_bytes": out.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "pipeline" / "data" / "sample.parquet")
    ap.add_argument("--target-bytes", type=int, default=5_000_000)
    args = ap.parse_args()
    summary = build(args.out, args.target_bytes)
    print(f"{summary['documents']} documents, {summary['text_bytes']:,} bytes of text, "
          f"{summary['file_bytes']:,} bytes on disk -> {args.out}")
    for pkg, s in summary["packages"].items():
        print(f"  {pkg} {s['version']}: {s['documents']} documents, {s['bytes']:,} bytes")


if __name__ == "__main__":
    main()
