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

import uvicorn

from supervisor import guard, limits, logs, reloader, sandbox
from supervisor.config import Config
from supervisor.connections import guarded_protocol
from supervisor.http import FunctionApp
from supervisor.metrics import Metrics
from supervisor.pool import Pool

# How long stopping workers may take once the server has stopped: SIGTERM, SIGKILL 50 ms later,
# then only the kernel's reaping is left.
REAP_TIMEOUT_S = 2.0
# How long the last log lines may wait for a slow log reader at exit.
LOG_DRAIN_TIMEOUT_S = 1.0


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
    server = _Server(uvicorn.Config(
        FunctionApp(pool, metrics, config, log),
        http=guarded_protocol(config.read_timeout_s),
        ws="none",
        lifespan="off",
        loop="none",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For from a client must not replace its address
        # A backstop only: the pool answers what is left at the graceful timeout (see below).
        timeout_graceful_shutdown=config.graceful_timeout_s + 2,
    ))
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
            with _stop_on_signals(server, pool, config.graceful_timeout_s, log):
                await server.serve(sockets=[listener])
        finally:
            await pool.stop(REAP_TIMEOUT_S)
            memory.close()
            chosen.close()
            if guard_pipe >= 0:
                os.close(guard_pipe)  # the guard finds nothing left to kill, and exits
            log.info("stopped")
            log.close(LOG_DRAIN_TIMEOUT_S)
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, minus its signal handling: the supervisor owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def _stop_on_signals(server: uvicorn.Server, pool: Pool, graceful_timeout_s: float,
                     log: logs.Log) -> Iterator[None]:
    """First SIGTERM/SIGINT: stop accepting, let calls finish for up to graceful_timeout_s,
    then answer what is left with 503 and stop. A second signal stops at once."""
    loop = asyncio.get_running_loop()

    def out_of_time() -> None:
        log.warning(f"calls still unfinished after {graceful_timeout_s:g} s; answering them 503")
        pool.abort_calls()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if server.should_exit:
            log.warning(f"{name} again: stopping now")
            server.force_exit = True
            pool.abort_calls()
        else:
            log.info(f"{name}: no new connections; finishing calls in flight "
                     f"(up to {graceful_timeout_s:g} s), then stopping")
            server.should_exit = True
            pool.draining = True
            loop.call_later(graceful_timeout_s, out_of_time)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
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
    for name in ("uvicorn", "asyncio"):
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
