"""Start everything, serve until a signal, stop everything: the supervisor's main sequence."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator

from supervisor import guard, limits, logs, reloader, sandbox
from supervisor.config import Config
from supervisor.http import FunctionApp
from supervisor.http11 import HttpLimits, HttpServer
from supervisor.metrics import Metrics
from supervisor.pool import Pool

# How long stopping workers may take once the server has stopped: SIGTERM, SIGKILL 50 ms later,
# then only the kernel's reaping is left.
REAP_TIMEOUT_S = 2.0
# How long the last log lines may wait for a slow log reader at exit.
LOG_DRAIN_TIMEOUT_S = 1.0
# Once every call is answered, how long connections may take to send the last answers.
CLOSE_TIMEOUT_S = 1.0
# After a second signal, how long the 503s to the calls cut short may take to go out.
FORCED_CLOSE_TIMEOUT_S = 0.2
# While stopping, how often to look whether the calls have all been answered.
DRAIN_POLL_S = 0.01


def run(config: Config) -> int:
    """Serve the function until SIGTERM or SIGINT; returns the exit code (2: the sandbox
    asked for cannot work here, said in one line)."""
    try:
        chosen = sandbox.choose(config)
    except sandbox.SandboxUnavailable as exc:
        sys.stderr.write(f"sfsupervisor: error: {exc}\n")
        return 2
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(config, chosen))


async def _serve(config: Config, chosen: sandbox.Sandbox) -> int:
    log = logs.Log(config.log_format, config.log_level, config.function_name)
    log.attach(asyncio.get_running_loop())
    _route_library_logs(log, config.log_level)
    sandbox.seal_supervisor()
    try:
        listener = _listen(config.host, config.port)
    except OSError as exc:
        log.error(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}")
        log.close(LOG_DRAIN_TIMEOUT_S)
        return 1
    host, port = listener.getsockname()[:2]
    try:
        memory = limits.choose_enforcement(config.memory_enforcement, config.memory_mb,
                                           config.max_pids)
    except OSError as exc:
        log.error(f"--memory-enforcement {config.memory_enforcement}: {exc}")
        log.close(LOG_DRAIN_TIMEOUT_S)
        return 1
    if not limits.become_subreaper():
        log.warning("cannot become a child subreaper: a daemon a function detaches may outlive "
                    "its instance")
    helpers = frozenset()
    guard_pipe = -1
    if directories := memory.cgroup_directories():
        guard_pid, guard_pipe = guard.start(directories)
        helpers = frozenset({guard_pid})
    pool = Pool(config, memory, chosen, log, helpers)
    metrics = Metrics(config.function_name, pool, log)
    server = HttpServer(FunctionApp(pool, metrics, config, log), _http_limits(config),
                        asyncio.get_running_loop())
    metrics.watch_http(server.stats, lambda: server.connection_count)
    log.info(f"serving {config.entrypoint} from {config.code_root} on "
             f"http://{_url_host(host)}:{port} with {config.instances} instance(s) "
             f"+ {config.spares} spare(s), timeout {config.timeout_s:g} s, "
             f"memory {config.memory_mb} MB enforced by {memory.description}, "
             f"sandbox {chosen.description}")
    if chosen.warning:
        log.warning(chosen.warning)
    pool.start()
    with _operator_signals(pool, log), _reloading(config, pool, log):
        try:
            await server.start(listener)
            await _serve_until_stopped(server, pool, config.graceful_timeout_s, log)
        finally:
            await pool.stop(REAP_TIMEOUT_S)
            memory.close()
            chosen.close()
            if guard_pipe >= 0:
                os.close(guard_pipe)  # the guard finds nothing left to kill, and exits
            log.info("stopped")
            log.close(LOG_DRAIN_TIMEOUT_S)
    return 0


def _http_limits(config: Config) -> HttpLimits:
    return HttpLimits(max_body_bytes=config.max_request_bytes,
                      read_timeout_s=config.read_timeout_s)


async def _serve_until_stopped(server: HttpServer, pool: Pool, graceful_timeout_s: float,
                               log: logs.Log) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting, let calls finish for up to
    graceful_timeout_s, answer what is left with 503 and close. A second signal stops at once."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    forced = False

    def on_signal(signum: int) -> None:
        nonlocal forced
        name = signal.Signals(signum).name
        if signalled.is_set():
            log.warning(f"{name} again: stopping now")
            forced = True
        else:
            log.info(f"{name}: no new connections; finishing calls in flight "
                     f"(up to {graceful_timeout_s:g} s), then stopping")
            signalled.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await signalled.wait()
        server.stop_accepting()
        pool.draining = True
        deadline = loop.time() + graceful_timeout_s
        while (pool.calls_in_progress or server.connection_count) and not forced \
                and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if pool.calls_in_progress and not forced:
            log.warning(f"calls still unfinished after {graceful_timeout_s:g} s; "
                        "answering them 503")
        pool.abort_calls()
        await server.wait_closed(FORCED_CLOSE_TIMEOUT_S if forced else CLOSE_TIMEOUT_S)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def _operator_signals(pool: Pool, log: logs.Log) -> Iterator[None]:
    """SIGHUP reloads: every instance is replaced by a fresh one that imports the code anew,
    with no call failing. SIGUSR1 and SIGUSR2 log the pool's state. None of them stops us."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, pool.reload, "SIGHUP")
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        name = signal.Signals(signum).name
        loop.add_signal_handler(signum, lambda name=name: log.info(f"{name}: {pool.describe()}"))
    try:
        yield
    finally:
        for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)  # on the way out they must not kill us either


def _reloading(config: Config, pool: Pool,
               log: logs.Log) -> contextlib.AbstractContextManager[None]:
    """--reload: new code replaces the instances as soon as it is saved."""
    if not config.reload:
        return contextlib.nullcontext()
    return reloader.reloading(config.code_root, functools.partial(pool.reload, strict=True), log)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=2048)
    listener.set_inheritable(False)
    return listener


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _route_library_logs(log: logs.Log, level: str) -> None:
    bridge = logs.LoggingBridge(log)
    for name in ("supervisor.http11", "asyncio"):
        library_log = logging.getLogger(name)
        library_log.handlers = [bridge]
        library_log.propagate = False
        library_log.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
