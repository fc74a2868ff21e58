"""One port for `make run`: websockets to uvicorn (ASGI), everything else to gunicorn (WSGI).

Django REST costs far less CPU per request under a WSGI server than under ASGI (no thread hop per
request), so ``scripts/cohort.py run`` serves the API, console, admin and static files with gunicorn
and keeps uvicorn only for the websocket streams (``/ws/...``). Both listen on private Unix sockets;
this router owns the one TCP port the user sees. Production does the same split with a real reverse
proxy (``deploy/nginx.conf``, ``deploy/README.md``).

How it routes: it reads the first request head of each client connection (up to 64 KiB), picks the
backend from the path (``/ws/`` → uvicorn, anything else → gunicorn), and from then on splices bytes
both ways for the life of the connection, with flow control. Routing is per connection, not per
request: a websocket handshake must be the first request on its connection, which is what browsers
and websocket clients do (they open a dedicated connection for each websocket). A ``/ws/`` request
sent later on a keep-alive HTTP connection reaches gunicorn and gets Django's 404, never a wrong
stream. The client address reaches gunicorn through the PROXY protocol (v1) header, so
``REMOTE_ADDR`` (rate limits, audit source IP) is the real client; for uvicorn, any client-sent
``X-Forwarded-For`` is dropped from the handshake and replaced by the peer address.

Usage: python scripts/router.py --listen 127.0.0.1:8000 --http /run/gunicorn.sock --ws /run/uvicorn.sock
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

MAX_HEAD = 64 * 1024
WS_PREFIX = b"/ws/"
_STRIP_ON_WS = (b"x-forwarded-for:", b"x-real-ip:", b"forwarded:")


def _reply(status: str, text: str) -> bytes:
    body = (text + "\n").encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def _ws_head(head: bytes, client_ip: str) -> bytes:
    """The handshake head with forwarding headers replaced by the peer's address."""
    lines = head.split(b"\r\n")
    kept = [lines[0]] + [ln for ln in lines[1:] if ln and not ln.lower().startswith(_STRIP_ON_WS)]
    kept.append(b"X-Forwarded-For: " + client_ip.encode())
    return b"\r\n".join(kept) + b"\r\n\r\n"


class Upstream(asyncio.Protocol):
    """The backend side of one spliced connection."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def eof_received(self) -> bool:
        if self.client.transport.can_write_eof():
            self.client.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()

    def pause_writing(self) -> None:  # the backend is slow to read: stop reading the client
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()


class Client(asyncio.Protocol):
    """One client connection: buffer the first request head, route, then splice."""

    def __init__(self, http_path: str, ws_path: str) -> None:
        self.http_path, self.ws_path = http_path, ws_path
        self.buf = bytearray()
        self.upstream: Upstream | None = None
        self.routing = False
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.write(data)
            return
        self.buf += data
        if self.routing:
            if len(self.buf) > MAX_HEAD:
                self.transport.pause_reading()  # resumed once the backend is connected
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._fail("431 Request Header Fields Too Large", "request head too large")
            return
        parts = bytes(self.buf[: self.buf.find(b"\r\n")]).split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._fail("400 Bad Request", "malformed request line")
            return
        self.routing = True
        asyncio.get_running_loop().create_task(self._connect(parts[1].startswith(WS_PREFIX), end + 4))

    async def _connect(self, ws: bool, head_len: int) -> None:
        loop = asyncio.get_running_loop()
        path = self.ws_path if ws else self.http_path
        upstream = Upstream(self)
        try:
            await loop.create_unix_connection(lambda: upstream, path)
        except OSError:
            self._fail("502 Bad Gateway", "the backend is not up (yet)")
            return
        assert upstream.transport is not None
        peer = self.transport.get_extra_info("peername") or ("127.0.0.1", 0)
        local = self.transport.get_extra_info("sockname") or ("127.0.0.1", 0)
        head, rest = bytes(self.buf[:head_len]), bytes(self.buf[head_len:])
        self.buf = bytearray()
        if ws:
            first = _ws_head(head, str(peer[0]))
        else:
            family = "TCP6" if ":" in str(peer[0]) else "TCP4"
            first = f"PROXY {family} {peer[0]} {local[0]} {peer[1]} {local[1]}\r\n".encode() + head
        if self.transport.is_closing():
            upstream.transport.close()
            return
        self.upstream = upstream
        upstream.transport.write(first + rest)
        self.transport.resume_reading()

    def _fail(self, status: str, text: str) -> None:
        self.transport.write(_reply(status, text))
        self.transport.close()

    def eof_received(self) -> bool:
        up = self.upstream
        if up is not None and up.transport is not None and up.transport.can_write_eof():
            up.transport.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.close()

    def pause_writing(self) -> None:  # the client is slow to read: stop reading the backend
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.resume_reading()


async def serve(host: str, port: int, http_path: str, ws_path: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(http_path, ws_path), host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="HOST:PORT the user connects to")
    parser.add_argument("--http", required=True, help="Unix socket of the WSGI server (gunicorn)")
    parser.add_argument("--ws", required=True, help="Unix socket of the ASGI server (uvicorn), for /ws/")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    try:
        import uvloop  # shipped with uvicorn[standard]: a faster event loop for the splice

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(host.strip("[]") or "127.0.0.1", int(port), args.http, args.ws))
    return 0


if __name__ == "__main__":
    sys.exit(main())
