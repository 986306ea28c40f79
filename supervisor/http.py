"""The HTTP front: each request that reaches the function path becomes a call, and its outcome
the response.

The HTTP/1.1 connection layer (http11.py) hands over a request once it has arrived whole; this
module picks the integration (HTTP, raw, async), admits the call to the pool, withdraws it if the
client leaves while it waits, and answers with the outcome, mapped and checked by
responses.py, with the call's X-Request-Id. It also writes the call's END/ERROR/REPORT lines (its
START line is the instance's, at dispatch). Three paths belong to the supervisor and are never
passed to the function: /healthz, /readyz and /metrics.

Routing: in single-function mode the function is served at every other path. With --config,
as the platform's URLs do, `/{name}` and `/{name}/anything` call the function `name` (the path
is still not part of the event), and any other path is answered 404 NotFound. Paths under
/2015-03-31/functions/ are the Lambda Invoke API (lambda_api.py), in either mode.

Nothing here builds the platform's event or maps a result: the worker does (worker/events.py),
from the request's raw parts, so that the one supervisor process every call crosses does as
little per call as it can. When the queue is full, a request with a body is refused before the
body is read (head_received): under overload, a refusal must cost less than a call.
"""

from __future__ import annotations

import asyncio
import functools
import time
from random import getrandbits
from urllib.parse import parse_qsl

from supervisor import lambda_api, logs, responses
from supervisor.calls import Call, Ending, Outcome
from supervisor.config import Config
from supervisor.host import Host
from supervisor.http11 import Answer, Request
from supervisor.metrics import OUTCOME_OF_ENDING, FunctionCounters, Metrics
from supervisor.pool import Pool
from worker import protocol

_INTEGRATIONS = ("raw", "async")
# Refusals (429) logged one by one per second; beyond that they are counted (logs.RefusalLines).
REFUSAL_LINES_PER_S = 20
# A client refused with 429 on a keep-alive connection has its next request read no sooner
# than this: hundreds of clients retrying at once would otherwise take the loop's time from the
# calls it serves and from /healthz, without a call more being served.
REFUSED_HOLD_S = 0.5
_TEXT = (b"Content-Type", b"text/plain; charset=utf-8")
_REQUEST_ID = b"X-Request-Id"
# The version (4) and variant bits of a random UUID.
_UUID_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_BITS = (0x4000 << 64) | (0x8000 << 48)


class _HttpCall(Call):
    """A call made for an HTTP request: the request to answer (None once answered), and the
    pool and counters of its function."""

    __slots__ = ("counters", "http_request", "pool")
    counters: FunctionCounters
    http_request: Request | None
    pool: Pool

    def render(self, outcome: Outcome) -> responses.Response:
        """The answer to the call's outcome, as the platform's HTTP integration gives it."""
        return responses.render(outcome, self.pool.config.max_response_bytes)

    def logged(self, log: logs.Log, headers: responses.Headers) -> None:
        """The call's log lines are written: add what the answer says of them."""


class _InvokeCall(_HttpCall):
    """A call made through the Lambda Invoke API, answered as Lambda answers."""

    __slots__ = ("tailed",)
    tailed: bool

    def render(self, outcome: Outcome) -> responses.Response:
        config = self.pool.config
        return lambda_api.render(outcome, self.request_id, config.timeout_s,
                                 config.max_response_bytes)

    def logged(self, log: logs.Log, headers: responses.Headers) -> None:
        if self.tailed:
            headers.append(lambda_api.log_result(log.take_tail(self.request_id)))


class FunctionApp:
    """The http11 App serving the functions of a host (see Routing above).

    `single` names the one function of single-function mode, served at every path.
    """

    def __init__(self, host: Host, metrics: Metrics, config: Config, log: logs.Log,
                 single: str | None) -> None:
        self._host = host
        self._single = single
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
        if request.path in self._reserved:
            return None  # handle() answers, keeping the connection
        pool = self._route(request.path)
        refusal = pool.refusal(_declared_body_bytes(request)) if pool is not None else None
        if refusal is None or pool is None:
            return None
        return self._refusal(pool, 429, refusal, "TooManyRequests", logged=True)

    def handle(self, request: Request) -> None:
        reserved = self._reserved.get(request.path)
        if reserved is not None:
            request.respond(*reserved())
            return
        if request.path.startswith(lambda_api.PATH_PREFIX):
            self._invoke(request)
            return
        pool = self._route(request.path)
        if pool is None:
            request.respond(*self._not_found(request.path))
            return
        query = request.query
        raw = background = False
        if b"integration=" in query:
            integration = _integration(query)
            if integration is not None and integration not in _INTEGRATIONS:
                request.respond(*self._refusal(
                    pool, 400, f"unknown integration {integration!r}: use raw or async",
                    "BadRequest", logged=False))
                return
            raw = integration is not None
            background = integration == "async"
        ip, port = request.client or ("", 0)
        mode = protocol.RAW_EVENT if raw else protocol.HTTP_EVENT
        call = _HttpCall(new_id(), [mode, request.method, request.query, request.headers, ip,
                                    port, time.time()],
                         request.body, time.perf_counter(), self._finish, len(request.body),
                         background)
        self._submit(pool, request, call)

    def _invoke(self, request: Request) -> None:
        """A call through the Lambda Invoke API (lambda_api.py)."""
        try:
            invocation = lambda_api.read(request)
        except lambda_api.Refused as refused:
            request.respond(*lambda_api.refusal(refused))
            return
        pool = self._function_named(invocation.function)
        if pool is None:
            request.respond(*lambda_api.not_found(invocation.function))
            return
        if invocation.kind == "DryRun":
            request.respond(204, [], b"")
            return
        call = _InvokeCall(new_id(), [protocol.LAMBDA_EVENT, invocation.client_context],
                           request.body, time.perf_counter(), self._finish, len(request.body),
                           invocation.kind == "Event")
        call.tailed = invocation.tail
        if call.tailed:
            self._log.tail(call.request_id)
        self._submit(pool, request, call)

    def _function_named(self, name: str) -> Pool | None:
        """The pool of the function `name`: in single-function mode, the one function's."""
        if self._single is not None:
            return self._host.pools.get(self._single)
        return self._host.pools.get(name)

    def _route(self, path: bytes) -> Pool | None:
        if self._single is not None:
            return self._host.pools.get(self._single)
        name = path.split(b"/", 2)[1] if path.startswith(b"/") else b""
        return self._host.pools.get(name.decode("latin-1")) if name else None

    def _not_found(self, path: bytes) -> Answer:
        name = path.split(b"/", 2)[1].decode("latin-1") if path.count(b"/") else ""
        known = ", ".join(f"/{known}" for known in sorted(self._host.pools))
        message = (f"no function named {name!r} here (functions: {known})" if name
                   else f"name a function in the path: {known}")
        status, headers, _, body, _ = responses.error(
            404, {"errorMessage": message, "errorType": "NotFound"}, function_error=False)
        return status, headers, body

    def _submit(self, pool: Pool, request: Request, call: _HttpCall) -> None:
        call.http_request = request
        call.pool = pool
        call.counters = self._metrics.of(pool.name)
        pool.submit(call)
        if call.outcome is not None:
            return  # answered already: refused at once, or served from a spare in no time
        if call.background:
            call.http_request = None
            request.respond(202, [(_REQUEST_ID, call.request_id.encode())], b"")
        elif call.dispatched_at is None:
            request.on_disconnect = functools.partial(pool.withdraw, call)

    def _finish(self, call: _HttpCall, outcome: Outcome) -> None:
        """The call's outcome: count it, log it, answer it (call.on_done)."""
        try:
            status, headers, lines, body, error_message = call.render(outcome)
            call.counters.call_ended(call, OUTCOME_OF_ENDING[outcome.ending])
            logs.call_end(self._log, call, status, error_message,
                          call.pool.config.memory_mb, self._refusal_lines)
            call.logged(self._log, headers)
            request = call.http_request
            if request is not None:
                call.http_request = None
                headers.append((_REQUEST_ID, call.request_id.encode()))
                hold_s = REFUSED_HOLD_S if outcome.ending is Ending.REJECTED else 0.0
                request.respond(status, headers, body, lines, hold_s)
        except Exception as exc:  # the pool is mid-bookkeeping: never raise into it
            self._log.error(f"answering call {call.request_id} failed: "
                            f"{type(exc).__name__}: {exc}")

    def _refusal(self, pool: Pool, status: int, message: str, error_type: str,
                 logged: bool) -> Answer:
        """The answer to a request refused before it became a call (`logged`: with a line)."""
        self._metrics.of(pool.name).count_refusal()
        request_id = new_id()
        if logged:
            self._refusal_lines.write(
                request_id, logs.error_line(request_id, status, f"{error_type}: {message}"))
        status, headers, _, body, _ = responses.error(
            status, {"errorMessage": message, "errorType": error_type}, function_error=False)
        headers.append((_REQUEST_ID, request_id.encode()))
        return status, headers, body

    # -- the supervisor's own paths ----------------------------------------------------------------

    def _live(self) -> Answer:
        pools = list(self._host.pools.values())
        if not pools or any(pool.is_live() for pool in pools):
            return 200, [_TEXT], b"ok\n"
        return 503, [_TEXT], (f"unhealthy: no worker could be started for "
                              f"{self._config.unhealthy_after_s:g} s\n").encode()

    def _ready(self) -> Answer:
        """Single-function mode: ready while an instance can serve. With many functions: ready
        while none that must keep instances (min_instances) is without one."""
        pools = list(self._host.pools.values())
        if all(pool.is_ready() for pool in pools):
            return 200, [_TEXT], b"ready\n"
        failing = next((pool for pool in pools if not pool.is_ready()), None)
        failure = failing.boot_failure if failing is not None else None
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
    """The body's Content-Length, or 0 for a chunked body (its length is not known yet)."""
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # llhttp has checked it is all digits
    return 0


def _integration(query_string: bytes) -> str | None:
    value = None
    for name, item in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "integration":
            value = item
    return value
