"""Benchmark: `tokshard serve` under load on loopback, and a 1 MB batch against the raw engine.

  1 KB texts  --requests POSTs of /v1/tokenize, each one ~1 KB text (corpus documents cut at a character boundary),
              over --concurrency keep-alive connections: requests/s, latency p50/p99/p99.9, errors, and the
              server's RSS after a warm-up, after the run and after a second identical run (growth = a leak)
  1 MB batch  one POST /v1/tokenize whose prompt is a list of whole documents totalling ~1 MB; time to the last
              byte of the response vs. `Tokenizer.encode_batch` on the same texts in this process (the raw engine,
              same threads), the two alternating so both see the same machine load (it is shared and noisy):
              the service's share of the raw speed is the ratio of the medians

  --compare-coalescing N  instead: two servers, one with --no-coalesce, loaded in alternation (N rounds of
              --requests each, order flipped every round, so both see the same machine load): req/s and p99 medians

The load generator is a minimal HTTP/1.1 keep-alive client on asyncio streams (uvloop when installed): the
server and the client share the machine, so the client must cost as little CPU as possible. It checks every
status and, for every 50th response, that the ids equal the tokenizer's.

    python bench/service_load.py --tokenizer /tmp/svc-tok32k [--source ../shared/corpus/val-00000.parquet]
        [--requests 10000] [--concurrency 16] [--workers 1] [--inline-chars 8192] [--json out.json]
    python bench/service_load.py --tokenizer /tmp/svc-tok32k --compare-coalescing 8 --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokshard.pipeline.tokenizer import Tokenizer  # noqa: E402

DEFAULT_SOURCE = REPO.parent / "shared" / "corpus" / "val-00000.parquet"


# -- the server -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tokenizer: str, workers: int, inline_chars: int, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tokshard", "serve", "--tokenizer", tokenizer, "--port", str(port),
           "--workers", str(workers), "--inline-chars", str(inline_chars), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError("the server did not become ready in 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created with start_new_session
        proc.wait()


def server_rss_mb(pid: int) -> float:
    """RSS of the server and its worker processes (uvicorn --workers N spawns children)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(c) for c in (task / "children").read_text().split()]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


# -- the client -----------------------------------------------------------------------------------------------
class Connection:
    """One keep-alive HTTP/1.1 connection: write a request, read status, headers and a Content-Length body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host.encode()

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 24)
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host, len(body), body))
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def load(url: str, bodies: list[bytes], expected: list[list[int]], n: int, concurrency: int
               ) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    wrong = 0
    next_i = 0

    async def worker() -> None:
        nonlocal errors, wrong, next_i
        conn = await Connection.open(url)
        try:
            while next_i < n:
                i = next_i
                next_i += 1
                t0 = time.perf_counter()
                status, data = await conn.post("/v1/tokenize", bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors += 1
                elif i % 50 == 0 and json.loads(data)["tokens"] != expected[i % len(bodies)]:
                    wrong += 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=1000)
    return {"requests": n, "seconds": wall, "req_per_s": n / wall, "p50_ms": q[499] * 1e3, "p99_ms": q[989] * 1e3,
            "p999_ms": q[998] * 1e3, "max_ms": max(latencies) * 1e3, "errors": errors, "wrong_ids": wrong}


async def batch_times(url: str, body: bytes, raw, repeats: int) -> tuple[list[float], list[float], bytes]:
    """HTTP round trips and raw encodes of the same batch, alternating (the server idles during `raw`)."""
    conn = await Connection.open(url)
    http_times, raw_times = [], []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            status, data = await conn.post("/v1/tokenize", body)
            http_times.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"batch request failed with {status}: {data[:300]!r}")
            t0 = time.perf_counter()
            raw()
            raw_times.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return http_times, raw_times, data


# -- the texts ------------------------------------------------------------------------------------------------
def texts_1kb(docs: list[str], count: int) -> list[str]:
    """Corpus documents cut to ~1,024 UTF-8 bytes at a character boundary (short documents are skipped)."""
    out = []
    for d in docs:
        raw = d.encode()
        if len(raw) >= 1024:
            out.append(raw[:1024].decode("utf-8", errors="ignore"))
            if len(out) == count:
                break
    return out


def texts_1mb(docs: list[str]) -> list[str]:
    out, size = [], 0
    for d in docs:
        out.append(d)
        size += len(d.encode())
        if size >= 1_000_000:
            break
    return out


def compare_coalescing(args: argparse.Namespace, bodies: list[bytes], expected: list[list[int]]) -> None:
    servers = {"coalesced": start_server(args.tokenizer, args.workers, args.inline_chars),
               "one call per request": start_server(args.tokenizer, args.workers, args.inline_chars,
                                                    "--no-coalesce")}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    try:
        for _, url in servers.values():
            asyncio.run(load(url, bodies, expected, 500, args.concurrency))  # warm-up
        names = list(servers)
        for round_ in range(args.compare_coalescing):
            for name in names if round_ % 2 == 0 else names[::-1]:
                r = asyncio.run(load(servers[name][1], bodies, expected, args.requests, args.concurrency))
                results[name].append(r)
                print(f"round {round_ + 1} {name}: {r['req_per_s']:,.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 "
                      f"{r['p99_ms']:.1f} ms, errors {r['errors']}, load average {os.getloadavg()[0]:.1f}")
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    for name, rs in results.items():
        print(f"{name}: median {statistics.median(r['req_per_s'] for r in rs):,.0f} req/s, median p99 "
              f"{statistics.median(r['p99_ms'] for r in rs):.1f} ms over {len(rs)} rounds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--source", default=str(DEFAULT_SOURCE))
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--inline-chars", type=int, default=8192)
    ap.add_argument("--batch-repeats", type=int, default=15)
    ap.add_argument("--compare-coalescing", type=int, default=0, metavar="ROUNDS")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    tok = Tokenizer.load(args.tokenizer)
    docs = pq.read_table(args.source, columns=["text"]).column("text").to_pylist()
    small = texts_1kb(docs, 1000)
    bodies = [json.dumps({"prompt": t}).encode() for t in small]
    expected = [tok.encode(t) for t in small]
    if args.compare_coalescing:
        compare_coalescing(args, bodies, expected)
        return
    big = texts_1mb(docs)
    big_body = json.dumps({"prompt": big}).encode()
    big_bytes = sum(len(t.encode()) for t in big)

    load_start = os.getloadavg()[0]
    proc, url = start_server(args.tokenizer, args.workers, args.inline_chars)
    try:
        asyncio.run(load(url, bodies, expected, 500, args.concurrency))  # warm-up
        rss_warm = server_rss_mb(proc.pid)
        run1 = asyncio.run(load(url, bodies, expected, args.requests, args.concurrency))
        rss_1 = server_rss_mb(proc.pid)
        run2 = asyncio.run(load(url, bodies, expected, args.requests, args.concurrency))
        rss_2 = server_rss_mb(proc.pid)
        http_times, raw_times, data = asyncio.run(
            batch_times(url, big_body, lambda: tok.encode_batch(big), args.batch_repeats))
        t0 = time.perf_counter()
        answer = json.loads(data)
        parse_s = time.perf_counter() - t0
    finally:
        stop_server(proc)
    ids = tok.encode_batch(big)
    if [d["tokens"] for d in answer["data"]] != ids:
        raise RuntimeError("the service's ids for the 1 MB batch differ from Tokenizer.encode_batch")
    http_s, raw_s = statistics.median(http_times), statistics.median(raw_times)
    n_tokens = sum(map(len, ids))
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "workers": args.workers,
        "load_average_1min": [load_start, os.getloadavg()[0]],
        "concurrency": args.concurrency, "inline_chars": args.inline_chars, "tokenizer_vocab": tok.vocab_size,
        "text_1kb": {"run1": run1, "run2": run2, "rss_mb": {"after_warmup": rss_warm, "after_run1": rss_1,
                                                            "after_run2": rss_2}},
        "batch_1mb": {"documents": len(big), "bytes": big_bytes, "tokens": n_tokens, "body_bytes": len(big_body),
                      "http_s_median": http_s, "http_s_all": http_times, "raw_s_median": raw_s,
                      "raw_s_all": raw_times,
                      "client_json_parse_s": parse_s, "share_of_raw": raw_s / http_s,
                      "http_tokens_per_s": n_tokens / http_s, "raw_tokens_per_s": n_tokens / raw_s},
    }
    print(f"machine load average (1 min) {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    for name, r in (("run 1", run1), ("run 2", run2)):
        print(f"1 KB texts, {name}: {r['requests']:,} requests, {args.concurrency} concurrent, {args.workers} "
              f"worker(s): {r['req_per_s']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
              f"p99.9 {r['p999_ms']:.2f} ms, max {r['max_ms']:.1f} ms, errors {r['errors']}, wrong ids "
              f"{r['wrong_ids']}")
    print(f"server RSS: {rss_warm:.1f} MB after warm-up, {rss_1:.1f} MB after run 1, {rss_2:.1f} MB after run 2")
    b = result["batch_1mb"]
    print(f"1 MB batch: {b['documents']} documents, {big_bytes:,} bytes, {n_tokens:,} tokens: HTTP "
          f"{http_s * 1e3:.1f} ms (median of {args.batch_repeats}), raw encode_batch {raw_s * 1e3:.1f} ms -> "
          f"{b['share_of_raw']:.0%} of the raw engine ({b['http_tokens_per_s'] / 1e6:.2f} M vs "
          f"{b['raw_tokens_per_s'] / 1e6:.2f} M tokens/s); client json.loads of the answer {parse_s * 1e3:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
