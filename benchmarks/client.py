"""A small asyncio HTTP/1.1 client, for what wrk cannot do: probes, checks and timed single calls.

Every request opens its own connection (`Connection: close`), so a call that follows a crash is
timed from connect to the last byte of the answer, whichever process ends up serving it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Answer:
    """One request's outcome: status 0 means no HTTP answer (`error` says why)."""

    status: int
    body: bytes
    elapsed_s: float
    error: str = ""


async def request(port: int, path: str = "/", body: bytes = b"",
                  content_type: str = "application/json", timeout_s: float = 10.0) -> Answer:
    """Send one request to 127.0.0.1:port (POST when there is a body) and read the answer."""
    started = time.perf_counter()
    try:
        status, payload = await asyncio.wait_for(
            _exchange(port, path, body, content_type), timeout_s)
    except (OSError, EOFError, ValueError, TimeoutError) as exc:
        return Answer(0, b"", time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
    return Answer(status, payload, time.perf_counter() - started)


def fetch(port: int, path: str = "/", body: bytes = b"", timeout_s: float = 10.0) -> Answer:
    """`request` for synchronous callers."""
    return asyncio.run(request(port, path, body, timeout_s=timeout_s))


async def _exchange(port: int, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        method = "POST" if body else "GET"
        head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
        writer.write(head.encode() + body)
        await writer.drain()
        return await _read_answer(reader)
    finally:
        writer.close()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise EOFError("the connection closed without an answer")
    status = int(status_line.split()[1])
    length = None
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    payload = await (reader.read() if length is None else reader.readexactly(length))
    return status, payload
