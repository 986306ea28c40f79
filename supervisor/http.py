"""The HTTP front: an ASGI app that turns a request into a call and the outcome into a response.

It runs under uvicorn (httptools, uvloop). The platform's event and response rules live in
events.py; this module decides the integration (HTTP, raw, async), reads the body within its
limit, renders each outcome as the platform does, and writes the call's END/ERROR/REPORT lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from supervisor import events, logs
from supervisor.calls import Call, Ending, Outcome
from supervisor.config import Config
from supervisor.pool import Pool

Headers = list[tuple[bytes, bytes]]

_JSON = (b"Content-Type", b"application/json")
_FUNCTION_ERROR = (b"X-Function-Error", b"true")
_TIMEOUT_ERROR = {"errorMessage": "execution timeout exceeded",
                  "errorType": "JobExecutionTimeoutExceeded", "stackTrace": None}
_INTEGRATIONS = ("raw", "async")


class FunctionApp:
    """The ASGI application serving the function at every path."""

    def __init__(self, pool: Pool, config: Config, log: logs.Log) -> None:
        self._pool = pool
        self._config = config
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._background: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request_id = str(uuid.uuid4())
        body = await _read_body(scope, receive, self._config.max_request_bytes)
        if body is None:
            limit_mb = self._config.max_request_bytes / (1024 * 1024)
            error = {"errorMessage": f"request body is larger than the {limit_mb:g} MB limit",
                     "errorType": "RequestTooLarge"}
            return await _send(send, 413, [_JSON], json.dumps(error).encode(), request_id)
        integration = _integration(scope["query_string"])
        if integration is not None and integration not in _INTEGRATIONS:
            error = {"errorMessage": f"unknown integration {integration!r}: use raw or async",
                     "errorType": "BadRequest"}
            return await _send(send, 400, [_JSON], json.dumps(error).encode(), request_id)
        call = Call(request_id, self._event(scope, body, request_id, integration),
                    time.perf_counter(), self._loop.create_future())
        if integration == "async":
            self._run_in_background(call)
            return await _send(send, 202, [], b"", request_id)
        status, headers, payload = await self._run(call, raw=integration == "raw")
        await _send(send, status, headers, payload, request_id)

    def _event(self, scope: dict[str, Any], body: bytes, request_id: str,
               integration: str | None) -> Any:
        if integration is not None:
            return events.build_raw_event(body)
        return events.build_http_event(
            scope["method"], scope["query_string"], scope["headers"], body, scope.get("client"),
            request_id, str(uuid.uuid4()), time.time())

    async def _run(self, call: Call, raw: bool) -> tuple[int, Headers, bytes]:
        outcome = await self._pool.run(call)
        status, headers, payload, error_message = _render(outcome, raw)
        self._log_end(call, status, error_message)
        return status, headers, payload

    def _run_in_background(self, call: Call) -> None:
        # The loop keeps only weak references to tasks: hold them until they finish.
        task = self._loop.create_task(self._run(call, raw=True))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _log_end(self, call: Call, status: int, error_message: str | None) -> None:
        write, rid, instance = self._log.write, call.request_id, call.instance_id
        if call.dispatched_at is None or call.finished_at is None:
            if error_message is not None:  # it never reached an instance
                write(logging.ERROR, logs.error_line(rid, status, error_message), None, rid)
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


def _render(outcome: Outcome, raw: bool) -> tuple[int, Headers, bytes, str | None]:
    """The response for an outcome: status, headers, body, and the ERROR line's message."""
    ending = outcome.ending
    if ending is Ending.OK:
        try:
            if raw:
                return 200, [], events.map_raw_response(outcome.value), None
            status, headers, body = events.map_http_response(outcome.value)
            return status, headers, body, None
        except events.MalformedResponse as exc:
            return _error(502, events.malformed_error(str(exc), outcome.value))
    if ending in (Ending.FUNCTION_ERROR, Ending.INIT_ERROR):
        return _error(502, outcome.value)
    if ending is Ending.UNSERIALIZABLE:
        return _error(502, {
            "errorMessage": "Malformed serverless function response: "
                            f"the result is not JSON-serializable: {outcome.detail}",
            "errorType": "ProxyIntegrationError",
            "payload": outcome.value,
        })
    if ending is Ending.TIMEOUT:
        return _error(504, _TIMEOUT_ERROR, "Execution timeout exceeded")
    if ending is Ending.MEMORY:
        return _error(502, {"errorMessage": outcome.detail, "errorType": "MemoryLimitExceeded",
                            "stackTrace": None})
    if ending is Ending.CRASH:
        return _error(502, {"errorMessage": outcome.detail, "errorType": "InstanceCrashed",
                            "stackTrace": None})
    if ending is Ending.PROTOCOL_ERROR:
        return _error(502, {"errorMessage": outcome.detail, "errorType": "WorkerProtocolError",
                            "stackTrace": None})
    if ending is Ending.SHUTDOWN:
        return _error(503, {"errorMessage": "the server is shutting down",
                            "errorType": "ServiceUnavailable"}, function_error=False)
    return _error(500, {"errorMessage": outcome.detail or "internal runtime error",
                        "errorType": "InternalError"}, function_error=False)


def _error(status: int, error: dict[str, Any], log_message: str | None = None,
           function_error: bool = True) -> tuple[int, Headers, bytes, str]:
    headers = [_JSON, _FUNCTION_ERROR] if function_error else [_JSON]
    message = log_message or f"{error.get('errorType')}: {error.get('errorMessage')}"
    return status, headers, json.dumps(error, ensure_ascii=False).encode(), message


async def _read_body(scope: dict[str, Any], receive: Any, limit: int) -> bytes | None:
    """The request body, or None when it is larger than the limit (read no further then)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
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


async def _send(send: Any, status: int, headers: Headers, body: bytes, request_id: str) -> None:
    headers.append((b"Content-Length", str(len(body)).encode()))
    headers.append((b"X-Request-Id", request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
