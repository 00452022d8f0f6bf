"""A bounded load test of ``oculi serve`` on 127.0.0.1: throughput, latency and memory at 1, 8 and 32 clients.

    python benchmarks/serve_load.py [--requests 5000] [--clients 1 8 32] [--run RUN] [--workers N]

Starts ``oculi serve`` itself on a free port of 127.0.0.1 (never any other address), waits for /readyz, then
for each number of concurrent clients sends --requests requests, POST /v1/predict with one image each, as
fast as the clients get answers. Every 20th upload (5%) is corrupt: a JPEG cut in half or bytes that are no
image; each must get 400. The images are 32 distinct 256x256 JPEGs (18-26 KB), so every request is
decoded and resized for real. Without --run, a model is trained first (``oculi train digits``: fast-cnn,
8x8 gray, about 15 s), into a temporary folder.

Reports, per number of clients: throughput, p50/p95/p99 latency, answers by status, 5xx answers other than
the documented 503 (busy), and whether every corrupt upload got 400; the server's memory before and after
(RSS of its own process, and PSS of it with its decoding workers, which shares their common pages out
fairly). Exits 1 on any 5xx other than 503, any corrupt upload not answered 400, or a traceback in the
server's log. The server is always stopped (SIGINT, then SIGKILL after 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CORRUPT_EVERY = 20  # 5%


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per number of clients")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--run", type=Path, help="the run folder to serve (default: train digits first)")
    parser.add_argument("--workers", type=int, help="oculi serve --workers (default: its own)")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not all(1 <= c <= 256 for c in args.clients):
        parser.error("--requests must be from 1 to 100,000 and --clients from 1 to 256")
    work = Path(tempfile.mkdtemp(prefix="oculi-serve-load-"))
    run = args.run or train_digits(work)
    good, corrupt = payloads()
    server = Server(run, work / "server.log", args.workers)
    try:
        server.start()
        before = server.memory()
        results = [asyncio.run(load(server.url, args.requests, clients, good, corrupt)) for clients in args.clients]
        after = server.memory()
    finally:
        server.stop()
    traceback = "Traceback" in (work / "server.log").read_text()
    report(results, before, after, traceback, server.log)
    bad = traceback or any(r["5xx"] or r["corrupt_not_400"] for r in results)
    return 1 if bad else 0


def train_digits(work: Path) -> Path:
    print("training a model to serve: oculi train digits ...", flush=True)
    subprocess.run([sys.executable, "-m", "oculi", "train", "digits", "--out", str(work / "run"), "--no-report",
                    "-q"], check=True, env=_env(), cwd=work)
    return work / "run"


def payloads() -> tuple[list[bytes], list[bytes]]:
    """32 distinct 256x256 JPEGs (smooth gradients with noise, like small photos) and two kinds of corrupt
    upload: a JPEG cut in half, and text."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 256)
    good = []
    for _ in range(32):
        base = np.stack([np.add.outer(ramp * rng.uniform(0, 200), ramp * rng.uniform(0, 55))] * 3, -1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        good.append(buffer.getvalue())
    return good, [good[0][: len(good[0]) // 2], b"this is not an image, whatever its name says\n" * 20]


async def load(url: str, n: int, clients: int, good: list[bytes], corrupt: list[bytes]) -> dict:
    """``n`` requests from ``clients`` concurrent clients, each on its own kept-alive connection, sending its
    next request as soon as it has the answer to the last one."""
    host, port = url.rsplit("/", 1)[1].split(":")
    requests = [predict_request(f"{i}.jpg", data) for i, data in enumerate(good)]
    bad = [predict_request("corrupt.jpg", data) for data in corrupt]
    latencies, statuses, corrupt_statuses = [], Counter(), Counter()
    next_index = iter(range(n))

    async def client():
        reader, writer = await asyncio.open_connection(host, int(port))
        for i in next_index:
            is_corrupt = i % CORRUPT_EVERY == CORRUPT_EVERY - 1
            began = time.perf_counter()
            status = await exchange(reader, writer, bad[i % len(bad)] if is_corrupt else requests[i % len(requests)])
            latencies.append(time.perf_counter() - began)
            statuses[status] += 1
            if is_corrupt:
                corrupt_statuses[status] += 1
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - began
    ms = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    return {"clients": clients, "requests": n, "seconds": seconds, "per_s": n / seconds,
            "p50": ms[0], "p95": ms[1], "p99": ms[2], "statuses": dict(sorted(statuses.items())),
            "5xx": sum(c for s, c in statuses.items() if s >= 500 and s != 503), "503": statuses.get(503, 0),
            "corrupt": sum(corrupt_statuses.values()),
            "corrupt_not_400": sum(c for s, c in corrupt_statuses.items() if s != 400)}


# The clients speak HTTP/1.1 over asyncio streams, each request encoded once: on a 2-core machine an HTTP
# library's own work is measured with the server's (with httpx at 32 clients, some requests took 2-3 s
# while the server answered every one within 0.25 s, and throughput was a fifth of this client's).
BOUNDARY = "oculi-load-test"


def predict_request(name: str, data: bytes) -> bytes:
    """POST /v1/predict with one file, as bytes on the wire."""
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n")
    return head.encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send a request, read its whole answer; returns the status."""
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
    await reader.readexactly(int(fields["content-length"]))
    return int(head[0].split(" ")[1])


class Server:
    """``oculi serve`` in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, run: Path, log: Path, workers: int | None):
        self.run, self.log, self.workers = run, log, workers
        self.process: subprocess.Popen | None = None
        with socket.create_server((HOST, 0)) as s:
            self.url = f"http://{HOST}:{s.getsockname()[1]}"

    def start(self, timeout: float = 120) -> None:
        port = self.url.rsplit(":", 1)[1]
        command = [sys.executable, "-m", "oculi", "serve", str(self.run), "--host", HOST, "--port", port]
        command += ["--workers", str(self.workers)] if self.workers else []
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"oculi serve exited with {self.process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2):
                    return  # 200: urlopen raises on any error status
            except OSError:  # refused while starting, or 503 while warming up
                pass
            time.sleep(0.2)
        raise SystemExit(f"oculi serve was not ready within {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def memory(self) -> dict:
        """MiB: RSS of the server's own process; PSS of it and its children (the decoding workers)."""
        pids = [self.process.pid, *_children(self.process.pid)]
        return {"rss": _status_kib(self.process.pid, "VmRSS") / 1024,
                "pss_all": sum(_pss_kib(pid) for pid in pids) / 1024, "processes": len(pids)}


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("Pss:")), 0)


def _env() -> dict:
    """This checkout's oculi first, whatever is installed."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def report(results: list[dict], before: dict, after: dict, traceback: bool, log: Path) -> None:
    print("\n| clients | requests | throughput | p50 | p95 | p99 | answers | 5xx (not 503) | 503 | corrupt -> 400 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        answers = ", ".join(f"{c:,} x {s}" for s, c in r["statuses"].items())
        print(f"| {r['clients']} | {r['requests']:,} | {r['per_s']:.1f} req/s | {r['p50']:.1f} ms | {r['p95']:.1f} ms "
              f"| {r['p99']:.1f} ms | {answers} | {r['5xx']} | {r['503']} "
              f"| {r['corrupt'] - r['corrupt_not_400']} of {r['corrupt']} |")
    for name, m in (("before", before), ("after", after)):
        print(f"server memory {name}: RSS {m['rss']:.0f} MiB (its own process); PSS {m['pss_all']:.0f} MiB "
              f"({m['processes']} processes: the server and its decoding workers)")
    print(f"tracebacks in the server's log: {'yes' if traceback else 'none'} ({log})")


if __name__ == "__main__":
    sys.exit(main())
