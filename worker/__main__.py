"""A worker: `python -P -m worker READ_FD WRITE_FD PARENT_PID`.

It imports the user's entry point once, reports READY (or the init error), then serves one call
at a time until the supervisor closes the frame pipe. The supervisor owns the deadline and the
memory limit: it kills this process when either is passed, so nothing here watches the clock.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from worker import context, loader, logsetup, protocol, sandbox
from worker.channel import Channel
from worker.memory import PeakMemory

_PR_SET_PDEATHSIG = 1
_MB = 1024 * 1024
# An unserializable result is shown to the caller as its repr, cut to this length.
_MAX_PAYLOAD_CHARS = 64 * 1024


def main() -> None:
    read_fd, write_fd, parent_pid = (int(arg) for arg in sys.argv[1:4])
    _die_with_parent(parent_pid)
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
        _, call_id, event, request_id, deadline_ms = frame
        stamp.request_id = request_id
        if memory is not None:
            memory.reset()
        kind, value = handler(event, context.Context(static, request_id, deadline_ms))
        _flush_output()
        if os.getpid() != runtime_pid:
            # A child the handler forked has returned into the runtime: only the runtime's own
            # process may answer or take the next call, so the child ends here.
            os._exit(0)
        peak_kb = memory.peak_kb() if memory is not None else 0
        channel.send_bytes(_reply(kind, call_id, value, peak_kb, max_response_bytes))


class _Handler:
    """The user's callable; a coroutine it returns runs on the worker's one event loop."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function
        self._runner = _AsyncRunner() if inspect.iscoroutinefunction(function) else None

    def __call__(self, event: Any, ctx: context.Context) -> tuple[int, Any]:
        try:
            result = self._function(event, ctx)
            if inspect.isawaitable(result):
                self._runner = self._runner or _AsyncRunner()
                result = self._runner.run(result)
        except Exception as exc:
            return protocol.FAILURE, loader.describe(exc)
        return protocol.RESULT, result


def _reply(kind: int, call_id: int, value: Any, peak_kb: int, max_bytes: int) -> bytes:
    """The reply frame; an unserializable or oversized result is answered as such instead."""
    try:
        data = protocol.pack([kind, call_id, value, peak_kb])
    except protocol.NotSerializable as exc:
        payload = _as_text(value)[:_MAX_PAYLOAD_CHARS]
        data = protocol.pack([protocol.UNSERIALIZABLE, call_id, str(exc), payload, peak_kb])
    if len(data) > max_bytes:
        message = (f"the function's response is {len(data) / _MB:.1f} MB, "
                   f"more than the {max_bytes / _MB:g} MB limit")
        error = protocol.error(message, "ResponseTooLarge", None)
        data = protocol.pack([protocol.FAILURE, call_id, error, peak_kb])
    return data


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
