"""The HTTP front: an ASGI app that turns a request into a call and the outcome into a response.

It runs under uvicorn (httptools, uvloop). The platform's event and response rules live in
events.py and responses.py; this module reads the body within its limit, picks the integration
(HTTP, raw, async), admits the call to the pool, withdraws it if the client leaves while it
waits, and writes the call's END/ERROR/REPORT lines. Three paths belong to the supervisor and
are never passed to the function: /healthz, /readyz and /metrics.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from random import getrandbits
from typing import Any
from urllib.parse import parse_qsl

from supervisor import events, logs, responses
from supervisor.calls import Call, Ending, Outcome
from supervisor.config import MB, Config
from supervisor.connections import CONNECTION
from supervisor.metrics import OUTCOME_OF_ENDING, Metrics
from supervisor.pool import Pool

_INTEGRATIONS = ("raw", "async")
_TEXT = (b"Content-Type", b"text/plain; charset=utf-8")


class FunctionApp:
    """The ASGI application serving the function at every path but the reserved ones."""

    def __init__(self, pool: Pool, metrics: Metrics, config: Config, log: logs.Log) -> None:
        self._pool = pool
        self._metrics = metrics
        self._config = config
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._reserved = {
            "/healthz": self._live,
            "/readyz": self._ready,
            "/metrics": self._scrape,
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        reserved = self._reserved.get(scope["path"])
        if reserved is not None:
            status, headers, body = reserved()
            return await _send(send, status, headers, body, None)
        request_id = new_id()
        try:
            status, headers, body = await self._invoke(scope, receive, request_id)
        except _ClientGone:
            return
        if status:
            await _send(send, status, headers, body, request_id)

    async def _invoke(self, scope: dict[str, Any], receive: Any,
                      request_id: str) -> tuple[int, responses.Headers, bytes]:
        """Run the request's call; status 0 means the client is gone and gets no answer."""
        body = await _read_body(scope, receive, self._config.max_request_bytes)
        if body is None:
            limit_mb = self._config.max_request_bytes / MB
            return self._refuse(413, f"request body is larger than the {limit_mb:g} MB limit",
                                "RequestTooLarge")
        integration = _integration(scope["query_string"])
        if integration is not None and integration not in _INTEGRATIONS:
            return self._refuse(400, f"unknown integration {integration!r}: use raw or async",
                                "BadRequest")
        event = self._event(scope, body, request_id, integration)
        call = Call(request_id, event, time.perf_counter(), self._loop.create_future(),
                    held_bytes=len(body) + len(event["body"] if integration is None else event),
                    background=integration == "async")
        if call.background:
            return self._run_in_background(call)
        self._pool.submit(call)
        if call.dispatched_at is None and not call.future.done():
            await self._wait_in_queue(call, scope)
        return self._finish(call, await call.future, raw=integration == "raw")

    def _event(self, scope: dict[str, Any], body: bytes, request_id: str,
               integration: str | None) -> Any:
        if integration is not None:
            return events.build_raw_event(body)
        return events.build_http_event(
            scope["method"], scope["query_string"], scope["headers"], body, scope.get("client"),
            request_id, new_id(), time.time())

    async def _wait_in_queue(self, call: Call, scope: dict[str, Any]) -> None:
        """Wait for the queued call to end, withdrawing it if the client disconnects first."""
        connection = scope[CONNECTION]
        connection.on_disconnect = functools.partial(self._pool.withdraw, call)
        try:
            await call.future
        finally:
            connection.on_disconnect = None

    def _finish(self, call: Call, outcome: Outcome,
                raw: bool) -> tuple[int, responses.Headers, bytes]:
        status, headers, body, error_message = responses.render(outcome, raw)
        self._metrics.call_ended(call, OUTCOME_OF_ENDING[outcome.ending])
        self._log_end(call, status, error_message)
        if outcome.ending is Ending.CANCELLED:
            return 0, [], b""
        return status, headers, body

    def _run_in_background(self, call: Call) -> tuple[int, responses.Headers, bytes]:
        """202 once the call is admitted; a call refused at once is answered as refused."""
        self._pool.submit(call)
        if call.future.done():
            return self._finish(call, call.future.result(), raw=True)
        call.future.add_done_callback(lambda done: self._finish(call, done.result(), raw=True))
        return 202, [], b""

    def _refuse(self, status: int, message: str,
                error_type: str) -> tuple[int, responses.Headers, bytes]:
        self._metrics.count_refusal()
        _, headers, body, _ = responses.error(
            status, {"errorMessage": message, "errorType": error_type}, function_error=False)
        return status, headers, body

    def _log_end(self, call: Call, status: int, error_message: str | None) -> None:
        write, rid, instance = self._log.write, call.request_id, call.instance_id
        if call.dispatched_at is None or call.finished_at is None:
            if error_message is not None:  # it never reached an instance
                level = logging.INFO if status == 499 else logging.WARNING
                write(level, logs.error_line(rid, status, error_message), None, rid)
            return
        write(logging.INFO, logs.end_line(rid), instance, rid)
        if error_message is not None:
            write(logging.ERROR, logs.error_line(rid, status, error_message), instance, rid)
        init_s = call.init_duration_s
        duration_ms = (call.finished_at - call.dispatched_at + (init_s or 0.0)) * 1000
        queuing_ms = (call.dispatched_at - call.arrived_at) * 1000
        report = logs.report_line(rid, duration_ms, self._config.memory_mb, call.peak_kb,
                                  queuing_ms, init_s * 1000 if init_s is not None else None)
        write(logging.INFO, report, instance, rid)

    # -- the supervisor's own paths ----------------------------------------------------------------

    def _live(self) -> tuple[int, responses.Headers, bytes]:
        if self._pool.is_live():
            return 200, [_TEXT], b"ok\n"
        return 503, [_TEXT], (f"unhealthy: no worker could be started for "
                              f"{self._config.unhealthy_after_s:g} s\n").encode()

    def _ready(self) -> tuple[int, responses.Headers, bytes]:
        if self._pool.is_ready():
            return 200, [_TEXT], b"ready\n"
        failure = self._pool.boot_failure
        if failure is not None:
            _, headers, body, _ = responses.render(failure, raw=False)
            return 503, headers, body
        return 503, [_TEXT], b"not ready: no instance is initialized\n"

    def _scrape(self) -> tuple[int, responses.Headers, bytes]:
        return 200, [(b"Content-Type", self._metrics.content_type.encode())], self._metrics.render()


def new_id() -> str:
    """A random (version 4) UUID as text, for request and trace ids.

    Drawn from `random`, not the OS: two ids per request from os.urandom cost two system calls,
    and these ids are names, not secrets.
    """
    bits = getrandbits(128) & ~(0xF000 << 64) | (0x4000 << 64)  # version 4
    bits = bits & ~(0xC000 << 48) | (0x8000 << 48)  # RFC 4122 variant
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class _ClientGone(Exception):
    """The client disconnected before its request arrived whole."""


async def _read_body(scope: dict[str, Any], receive: Any, limit: int) -> bytes | None:
    """The request body, or None when it is larger than the limit (read no further then)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _integration(query_string: bytes) -> str | None:
    if b"integration=" not in query_string:
        return None
    value = None
    for name, item in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "integration":
            value = item
    return value


async def _send(send: Any, status: int, headers: responses.Headers, body: bytes,
                request_id: str | None) -> None:
    headers.append((b"Content-Length", str(len(body)).encode()))
    if request_id is not None:
        headers.append((b"X-Request-Id", request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
