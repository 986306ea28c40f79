"""The HTTP front: each request that reaches the function path becomes a call, and its outcome
the response.

The HTTP/1.1 connection layer (http11.py) hands over a request once it has arrived whole; this
module picks the integration (HTTP, raw, async), admits the call to the pool, withdraws it if the
client leaves while it waits, and answers with the outcome, mapped and checked by
responses.py, with the call's X-Request-Id. It also writes the call's END/ERROR/REPORT lines (its
START line is the instance's, at dispatch). Three paths belong to the supervisor and are never
passed to the function: /healthz, /readyz and /metrics.

Nothing here builds the platform's event or maps a result: the worker does (worker/events.py),
from the request's raw parts, so that the one supervisor process every call crosses does as
little per call as it can. When the queue is full, a request with a body is refused before the
body is read (head_received): under overload, a refusal must cost less than a call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from random import getrandbits
from urllib.parse import parse_qsl

from supervisor import logs, responses
from supervisor.calls import Call, Ending, Outcome
from supervisor.config import Config
from supervisor.http11 import Answer, Request
from supervisor.metrics import OUTCOME_OF_ENDING, Metrics
from supervisor.pool import Pool

_INTEGRATIONS = ("raw", "async")
# Refusals (429) logged one by one per second; beyond that they are counted (logs.RefusalLines).
REFUSAL_LINES_PER_S = 20
# A client refused with 429 on a keep-alive connection has its next request read no sooner
# than this: hundreds of clients retrying at once would otherwise take the loop's time from the
# calls it serves and from /healthz, without a call more being served.
REFUSED_HOLD_S = 0.2
_TEXT = (b"Content-Type", b"text/plain; charset=utf-8")
_REQUEST_ID = b"X-Request-Id"
# The version (4) and variant bits of a random UUID.
_UUID_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_BITS = (0x4000 << 64) | (0x8000 << 48)


class _HttpCall(Call):
    """A call made for an HTTP request: the request to answer (None once answered)."""

    __slots__ = ("http_request",)


class FunctionApp:
    """The http11 App serving the function at every path but the reserved ones."""

    def __init__(self, pool: Pool, metrics: Metrics, config: Config, log: logs.Log) -> None:
        self._pool = pool
        self._metrics = metrics
        self._config = config
        self._log = log
        self._refusal_lines = logs.RefusalLines(log, REFUSAL_LINES_PER_S,
                                                asyncio.get_running_loop())
        self._reserved = {
            b"/healthz": self._live,
            b"/readyz": self._ready,
            b"/metrics": self._scrape,
        }

    def head_received(self, request: Request) -> Answer | None:
        """429 before the body is read, for a request with a body that could not be queued."""
        body_bytes = _declared_body_bytes(request)
        if not body_bytes or request.path in self._reserved:
            return None  # nothing to spare reading: handle() answers, keeping the connection
        refusal = self._pool.refusal(max(body_bytes, 0))
        if refusal is None:
            return None
        return self._refusal(429, refusal, "TooManyRequests", logged=True)

    def handle(self, request: Request) -> None:
        reserved = self._reserved.get(request.path)
        if reserved is not None:
            request.respond(*reserved())
            return
        query = request.query
        raw = background = False
        if b"integration=" in query:
            integration = _integration(query)
            if integration is not None and integration not in _INTEGRATIONS:
                request.respond(*self._refusal(
                    400, f"unknown integration {integration!r}: use raw or async", "BadRequest",
                    logged=False))
                return
            raw = integration is not None
            background = integration == "async"
        self._submit(request, raw, background)

    def _submit(self, request: Request, raw: bool, background: bool) -> None:
        body = request.body
        ip, port = request.client or ("", 0)
        call = _HttpCall(new_id(), [raw, request.method, request.query, request.headers, ip, port,
                                    time.time()],
                         body, time.perf_counter(), self._finish, len(body), background)
        call.http_request = request
        self._pool.submit(call)
        if call.outcome is not None:
            return  # answered already: refused at once, or served from a spare in no time
        if background:
            call.http_request = None
            request.respond(202, [(_REQUEST_ID, call.request_id.encode())], b"")
        elif call.dispatched_at is None:
            request.on_disconnect = functools.partial(self._pool.withdraw, call)

    def _finish(self, call: Call, outcome: Outcome) -> None:
        """The call's outcome: count it, log it, answer it (call.on_done)."""
        try:
            status, headers, lines, body, error_message = responses.render(
                outcome, self._config.max_response_bytes)
            self._metrics.call_ended(call, OUTCOME_OF_ENDING[outcome.ending])
            self._log_end(call, status, error_message)
            request = call.http_request  # type: ignore[attr-defined]
            if request is not None:
                call.http_request = None  # type: ignore[attr-defined]
                headers.append((_REQUEST_ID, call.request_id.encode()))
                hold_s = REFUSED_HOLD_S if outcome.ending is Ending.REJECTED else 0.0
                request.respond(status, headers, body, lines, hold_s)
        except Exception as exc:  # the pool is mid-bookkeeping: never raise into it
            self._log.error(f"answering call {call.request_id} failed: "
                            f"{type(exc).__name__}: {exc}")

    def _refusal(self, status: int, message: str, error_type: str, logged: bool) -> Answer:
        """The answer to a request refused before it became a call (`logged`: with a line)."""
        self._metrics.count_refusal()
        request_id = new_id()
        if logged:
            self._refusal_lines.write(
                request_id, logs.error_line(request_id, status, f"{error_type}: {message}"))
        status, headers, _, body, _ = responses.error(
            status, {"errorMessage": message, "errorType": error_type}, function_error=False)
        headers.append((_REQUEST_ID, request_id.encode()))
        return status, headers, body

    def _log_end(self, call: Call, status: int, error_message: str | None) -> None:
        log, rid, instance = self._log, call.request_id, call.instance_id
        dispatched_at, finished_at = call.dispatched_at, call.finished_at
        if dispatched_at is None or finished_at is None or instance is None:
            if error_message is None:
                return
            line = logs.error_line(rid, status, error_message)  # it never reached an instance
            if status == 429:
                self._refusal_lines.write(rid, line)
            else:
                log.write(logging.INFO if status == 499 else logging.WARNING, line, None, rid)
            return
        if error_message is not None:
            log.write(logging.INFO, logs.end_line(rid), instance, rid)
            log.write(logging.ERROR, logs.error_line(rid, status, error_message), instance, rid)
        if log.level > logging.INFO:
            return
        init_s = call.init_duration_s
        duration_ms = (finished_at - dispatched_at + (init_s or 0.0)) * 1000
        report = logs.report_line(rid, duration_ms, self._config.memory_mb, call.peak_kb,
                                  (dispatched_at - call.arrived_at) * 1000,
                                  init_s * 1000 if init_s is not None else None)
        if error_message is None:
            log.call_ended(instance, rid, report)
        else:
            log.write(logging.INFO, report, instance, rid)

    # -- the supervisor's own paths ----------------------------------------------------------------

    def _live(self) -> Answer:
        if self._pool.is_live():
            return 200, [_TEXT], b"ok\n"
        return 503, [_TEXT], (f"unhealthy: no worker could be started for "
                              f"{self._config.unhealthy_after_s:g} s\n").encode()

    def _ready(self) -> Answer:
        if self._pool.is_ready():
            return 200, [_TEXT], b"ready\n"
        failure = self._pool.boot_failure
        if failure is not None:
            _, headers, _, body, _ = responses.render(failure, self._config.max_response_bytes)
            return 503, headers, body
        return 503, [_TEXT], b"not ready: no instance is initialized\n"

    def _scrape(self) -> Answer:
        return 200, [(b"Content-Type", self._metrics.content_type)], self._metrics.render()


def new_id() -> str:
    """A random (version 4) UUID as text, for request ids.

    Drawn from `random`, not the OS: an id per request from os.urandom costs a system call, and
    these ids are names, not secrets.
    """
    text = "%032x" % (getrandbits(128) & _UUID_MASK | _UUID_BITS)
    return "-".join((text[:8], text[8:12], text[12:16], text[16:20], text[20:]))


def _declared_body_bytes(request: Request) -> int:
    """The body's Content-Length, -1 for a chunked body (length unknown), or 0 for none."""
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # llhttp has checked it is all digits
        if name == b"transfer-encoding":
            return -1
    return 0


def _integration(query_string: bytes) -> str | None:
    value = None
    for name, item in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "integration":
            value = item
    return value
