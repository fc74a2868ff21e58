"""A uvicorn server subprocess (bench.settings) and a small keep-alive HTTP/1.1 load generator."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from bench.common import ROOT, log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``uvicorn config.asgi:application --workers N`` on a free localhost port, with bench.settings
    and the connection pool on; stopped (with its workers) when the block ends."""

    def __init__(self, *, workers: int) -> None:
        self.workers = workers
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="bench.settings", COHORT_DB_POOL="true")
        cmd = [
            sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", str(self.workers), "--lifespan", "off",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        log(f"starting uvicorn ({self.workers} workers) on 127.0.0.1:{self.port}")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with status {self.proc.returncode}")
            try:
                status, _body = asyncio.run(_get_once(self.port, "/healthz"))
                if status == 200:
                    # Each worker imports Django on its own; give the slower one a moment to be ready.
                    asyncio.run(run_phase(self.port, lambda i: request_bytes("GET", "/healthz"), n=50, concurrency=8))
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("uvicorn did not answer /healthz within 90 s")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this server was started in, nothing else
            proc.wait(timeout=10)


def request_bytes(method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: cohort-bench/1", "Accept: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length: int | None = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return status, (await reader.readexactly(length) if length else b"")


async def _get_once(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes("GET", path))
        return await asyncio.wait_for(_read_response(reader), timeout=10)
    finally:
        writer.close()


async def request_once(port: int, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return await asyncio.wait_for(_read_response(reader), timeout=30)
    finally:
        writer.close()


@dataclass
class Phase:
    """Latencies (seconds) of one batch of requests and the wall time the batch took."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: list[str] = field(default_factory=list)


async def run_phase(port: int, make: Callable[[int], bytes], *, n: int, concurrency: int, expect: int = 200) -> Phase:
    """Send ``n`` requests (``make(i)`` gives request i) over ``concurrency`` fresh keep-alive
    connections, each waiting for its response before sending the next (a closed loop)."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    phase = Phase()
    counter = iter(range(n))
    perf = time.perf_counter

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in counter:
            raw = make(i)
            t0 = perf()
            writer.write(raw)
            status, body = await _read_response(reader)
            phase.latencies.append(perf() - t0)
            if status != expect and len(phase.errors) < 5:
                phase.errors.append(f"HTTP {status}: {body[:300]!r}")

    start = perf()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker(r, w) for r, w in conns)), timeout=600)
    finally:
        phase.wall = perf() - start
        for _r, w in conns:
            w.close()
    if phase.errors:
        raise RuntimeError("unexpected responses: " + " | ".join(phase.errors))
    return phase
