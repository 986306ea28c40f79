"""A worker: `python -P -m worker READ_FD WRITE_FD PARENT_PID`.

It imports the user's entry point once, reports READY (or the init error), then serves one call
at a time until the supervisor closes the frame pipe. The supervisor owns the deadline and the
memory limit: it kills this process when either is passed, so nothing here watches the clock.
"""

from __future__ import annotations

import array
import fcntl
import inspect
import json
import os
import sys
import termios
import time
from collections.abc import Callable
from typing import Any

from worker import context, events, loader, logsetup, protocol, sandbox
from worker.channel import Channel
from worker.memory import PeakMemory

_PR_SET_PDEATHSIG = 1
_MB = 1024 * 1024
# An unserializable result is shown to the caller as its repr, cut to this length.
_MAX_PAYLOAD_CHARS = 64 * 1024
# The fields of a result that the gateway maps; any other must still be JSON.
_RESPONSE_FIELDS = frozenset(("statusCode", "headers", "multiValueHeaders", "body",
                              "isBase64Encoded"))
_unread = array.array("i", [0])
# Results that are surely not awaitable: most are, and inspect.isawaitable costs a few checks.
_PLAIN_RESULTS = frozenset((dict, str, list, type(None)))


def main() -> None:
    read_fd, write_fd, parent_pid = (int(arg) for arg in sys.argv[1:4])
    _die_with_parent(parent_pid)
    _schedule_as_batch()
    sys.argv = [sys.argv[0]]
    channel = Channel(read_fd, write_fd)
    init = channel.receive()
    if init is None or init[0] != protocol.INIT or init[1] != protocol.VERSION:
        sys.exit(f"worker: expected INIT frame version {protocol.VERSION}, got {init!r}")
    _, _, entrypoint, static, limits, environment, sandbox_spec = init
    sandbox.enter(sandbox_spec, (read_fd, write_fd))
    if sandbox_spec["tier"] != "ns" and os.getppid() != parent_pid:
        os._exit(1)  # the supervisor died before the parent-death signal was armed again
    _take_environment(environment)
    _limit_address_space(limits["address_space_bytes"])
    stamp = logsetup.install()
    _forget_runtime_modules()
    sys.stdout.reconfigure(line_buffering=True)
    init_started = time.perf_counter()
    try:
        handler = _Handler(loader.load(entrypoint, os.getcwd()))
    except Exception as exc:
        _flush_output()
        channel.send([protocol.INIT_ERROR, loader.describe(exc)])
        return
    _flush_output()
    channel.send([protocol.READY, protocol.VERSION, (time.perf_counter() - init_started) * 1000])
    memory = PeakMemory() if limits["measure_peak"] else None
    _serve(channel, handler, static, limits["max_response_bytes"], memory, stamp)


def _schedule_as_batch() -> None:
    """Run under SCHED_BATCH: a worker woken by a call does not preempt the supervisor.

    The supervisor writes a call to the pipe and has more to do (answer the previous call, read
    the next request); with the default policy the woken worker often takes its core at once,
    and the supervisor waits to be scheduled again. A batch task gets the same share of CPU and
    the same nice level; it only forgoes preempting others on wake-up.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        pass  # a seccomp profile or an old kernel: the default policy serves as well


def _serve(
    channel: Channel,
    handler: _Handler,
    static: dict[str, Any],
    max_response_bytes: int,
    memory: PeakMemory | None,
    stamp: logsetup.RequestIdStamp,
) -> None:
    runtime_pid = os.getpid()
    while (frame := channel.receive()) is not None:
        _, call_id, request_id, deadline_ms, request, body = frame
        stamp.request_id = request_id
        if memory is not None:
            memory.reset()
        mode = request[0]
        ctx = context.Context(static, request_id, deadline_ms)
        if mode == protocol.HTTP_EVENT:
            event = _http_event(request, body, request_id)
        elif mode == protocol.RAW_EVENT:
            event = events.build_raw_event(body)
        else:
            event = events.build_lambda_event(body)
            if request[1] is not None:
                ctx.client_context = context.ClientContext(request[1])
        ok, value = handler(event, ctx)
        _flush_output()
        if os.getpid() != runtime_pid:
            # A child the handler forked has returned into the runtime: only the runtime's own
            # process may answer or take the next call, so the child ends here.
            os._exit(0)
        peak_kb = memory.peak_kb() if memory is not None else 0
        reply = _reply(ok, value, mode, [call_id, peak_kb, _unread_output()], max_response_bytes)
        channel.send_parts(reply)


def _http_event(request: list[Any], body: bytes, request_id: str) -> dict[str, Any]:
    _, method, query, headers, client_ip, client_port, request_time = request
    client = (client_ip, client_port) if client_ip else None
    return events.build_http_event(method, query, headers, body, client, request_id,
                                   events.new_id(), request_time)


class _Handler:
    """The user's callable; a coroutine it returns runs on the worker's one event loop."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function
        self._runner = _AsyncRunner() if inspect.iscoroutinefunction(function) else None

    def __call__(self, event: Any, ctx: context.Context) -> tuple[bool, Any]:
        """(True, the result), or (False, the error object) when the handler raised."""
        try:
            result = self._function(event, ctx)
            if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
                self._runner = self._runner or _AsyncRunner()
                result = self._runner.run(result)
        except Exception as exc:
            return False, loader.describe(exc)
        return True, result


def _reply(ok: bool, value: Any, mode: int, common: list[Any], max_bytes: int) -> list[bytes]:
    """The reply frame's buffers: the mapped response, or why there is none.

    `common` is [call_id, peak_kb, output]. A response over max_bytes is answered as
    ResponseTooLarge instead, and a result that is not JSON as such (as the platform serializes
    a result before its gateway maps it).
    """
    if not ok:
        return [protocol.pack([protocol.FAILURE, *common, value])]
    try:
        if mode == protocol.RAW_EVENT:
            status, lines, body = 200, b"", events.map_raw_response(value)
        elif mode == protocol.LAMBDA_EVENT:
            status, lines, body = 200, b"", events.map_lambda_response(value)
        else:
            status, lines, body = events.map_http_response_lines(value)
            _check_extra_fields(value)
    except events.MalformedResponse as exc:
        if mode == protocol.LAMBDA_EVENT:  # as Lambda's runtime reports it
            error = protocol.error(f"Unable to marshal response: {exc}", "Runtime.MarshalError",
                                   None)
            return [protocol.pack([protocol.FAILURE, *common, error])]
        parts = [_malformed(common, value, str(exc))]
    else:
        if len(lines) > protocol.MAX_RESPONSE_HEAD_BYTES:
            reason = (f"the headers take {len(lines)} bytes, more than the "
                      f"{protocol.MAX_RESPONSE_HEAD_BYTES}-byte limit")
            parts = [_malformed(common, value, reason)]
        else:
            parts = protocol.pack_with_body([protocol.RESPONSE, *common, status, lines], body)
    size = len(parts[0]) if len(parts) == 1 else sum(map(len, parts))
    if size > max_bytes:
        message = (f"the function's response is {size / _MB:.1f} MB, "
                   f"more than the {max_bytes / _MB:g} MB limit")
        error = protocol.error(message, "ResponseTooLarge", None)
        parts = [protocol.pack([protocol.FAILURE, *common, error])]
    return parts


def _check_extra_fields(result: dict[str, Any]) -> None:
    """Fields the gateway ignores must still be JSON, or the platform fails the call."""
    if not _RESPONSE_FIELDS.issuperset(result):
        _check_json({key: field for key, field in result.items() if key not in _RESPONSE_FIELDS})


def _check_json(value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise events.MalformedResponse(f"the result is not JSON-serializable: {exc}") from None


def _malformed(common: list[Any], value: Any, reason: str) -> bytes:
    """The MALFORMED frame: a result that is not JSON is reported as such, before any other
    flaw, with its repr as the payload; otherwise the payload is the result as JSON."""
    try:
        _check_json(value)
    except events.MalformedResponse as exc:
        payload = _as_text(value)[:_MAX_PAYLOAD_CHARS]
        return protocol.pack([protocol.MALFORMED, *common, str(exc), payload])
    payload = events.malformed_error(reason, value)["payload"]
    return protocol.pack([protocol.MALFORMED, *common, reason, payload])


def _as_text(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<unrepresentable {type(value).__name__}: {exc}>"


class _AsyncRunner:
    """One event loop for the worker's lifetime, so that state bound to it survives calls."""

    def __init__(self) -> None:
        import asyncio

        try:
            import uvloop

            self._loop = uvloop.new_event_loop()
        except ImportError:
            self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)

    def run(self, awaitable: Any) -> Any:
        return self._loop.run_until_complete(awaitable)


def _unread_output() -> int:
    """Which of the function's output pipes hold bytes the supervisor has not read yet.

    Most calls print nothing: saying so spares the supervisor a look at both pipes per call.
    A descriptor that cannot be asked (closed, redirected) counts as holding output.
    """
    output = 0
    for fd, flag in ((1, protocol.OUTPUT_STDOUT), (2, protocol.OUTPUT_STDERR)):
        try:
            fcntl.ioctl(fd, termios.FIONREAD, _unread, True)
        except OSError:
            output |= flag
            continue
        if _unread[0]:
            output |= flag
    return output


def _flush_output() -> None:
    """Push what the call printed into the pipes before its result, so its lines precede END."""
    for stream in {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}:
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _take_environment(environment: dict[str, str]) -> None:
    """Become the function's environment, as the platform's preloaded runtime does before it
    imports the user's code. PYTHONPATH and PYTHONDONTWRITEBYTECODE, which an interpreter reads
    only as it starts, are applied here by hand."""
    os.environ.clear()
    os.environ.update(environment)
    extra_paths = [path for path in environment.get("PYTHONPATH", "").split(os.pathsep) if path]
    sys.path[0:0] = extra_paths
    if environment.get("PYTHONDONTWRITEBYTECODE"):
        sys.dont_write_bytecode = True


def _limit_address_space(limit_bytes: int | None) -> None:
    """Apply the opt-in RLIMIT_AS (never the default: numpy alone reserves ~1 GB of it)."""
    if limit_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to kill this process when the supervisor dies, even mid-call."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, 9)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _forget_runtime_modules() -> None:
    """Let the user's code import its own `worker` module: ours stay loaded but unnamed."""
    for name in [name for name in sys.modules if name == "worker" or name.startswith("worker.")]:
        del sys.modules[name]


if __name__ == "__main__":
    main()
