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
from collections.abc import AsyncIterator, Callable, Iterator

from supervisor import configfile, guard, heap, limits, logs, reloader, sandbox
from supervisor.config import Config, FunctionSettings
from supervisor.host import Host
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


def run(config: Config, choice: sandbox.Choice) -> int:
    """Serve one function until SIGTERM or SIGINT; returns the exit code (2: the sandbox asked
    for cannot work here, said in one line). `choice`: the sandbox's, begun by the caller."""
    single = FunctionSettings(config.function_name, config)
    return _run(config, [single], single.name, None, choice)


def run_host(host_config: configfile.HostConfig) -> int:
    """Serve the functions of a --config file (SIGHUP reads it again); the exit code."""
    functions = list(host_config.functions.values())
    # Probed with a function's own code root: readable to the sandbox uid, it must be.
    choice = sandbox.Choice(functions[0].config)
    return _run(host_config.server, functions, None, host_config, choice)


def _run(server: Config, functions: list[FunctionSettings], single: str | None,
         host_config: configfile.HostConfig | None, choice: sandbox.Choice) -> int:
    try:
        chosen = choice.result()
    except sandbox.SandboxUnavailable as exc:
        sys.stderr.write(f"sfsupervisor: error: {exc}\n")
        return 2
    heap.fix_thresholds()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_serve(server, functions, single, host_config, chosen))


async def _serve(config: Config, functions: list[FunctionSettings], single: str | None,
                 host_config: configfile.HostConfig | None, chosen: sandbox.Sandbox) -> int:
    log = logs.Log(config.log_format, config.log_level, single or "")
    log.attach(asyncio.get_running_loop())
    _route_library_logs(log, config.log_level)
    sandbox.seal_supervisor()
    try:
        listener = _listen(config.host, config.port)
    except OSError as exc:
        log.error(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}")
        log.close(LOG_DRAIN_TIMEOUT_S)
        return 1
    budgets = (host_config.max_instances, host_config.max_memory_mb) if host_config else ()
    try:
        async with running_host(config, functions, chosen, log, budgets) as (host, memory):
            metrics = Metrics(host, log, single)
            server = HttpServer(FunctionApp(host, metrics, config, log, single),
                                _http_limits(config), asyncio.get_running_loop())
            metrics.watch_http(server.stats, lambda: server.connection_count)
            _announce(log, listener, host, memory, chosen)
            host.start()
            reload = _reloader(host_config, host, memory, chosen, log)
            with _operator_signals(reload, host, log), _reloading(config, host, single, log), \
                    _pid_file(host_config), _trimming_the_heap():
                await server.start(listener)
                await _serve_until_stopped(server, host, config.graceful_timeout_s, log)
    except MemoryEnforcementUnavailable:
        return 1
    finally:
        log.close(LOG_DRAIN_TIMEOUT_S)
    return 0


@contextlib.contextmanager
def _trimming_the_heap() -> Iterator[None]:
    trimmer = heap.Trimmer(asyncio.get_running_loop())
    trimmer.start()
    try:
        yield
    finally:
        trimmer.stop()


class MemoryEnforcementUnavailable(Exception):
    """--memory-enforcement asked for what this machine cannot do (logged already)."""


@contextlib.asynccontextmanager
async def running_host(config: Config, functions: list[FunctionSettings],
                       chosen: sandbox.Sandbox, log: logs.Log, budgets: tuple[int, int] | tuple[()]
                       ) -> AsyncIterator[tuple[Host, limits.MemoryEnforcement]]:
    """A Host with a pool per function (not started yet), and how memory is enforced; on the
    way out every worker is stopped and every cgroup removed. Raises
    MemoryEnforcementUnavailable."""
    try:
        memory = limits.choose_enforcement(config.memory_enforcement)
    except OSError as exc:
        log.error(f"--memory-enforcement {config.memory_enforcement}: {exc}")
        raise MemoryEnforcementUnavailable from exc
    if not limits.become_subreaper():
        log.warning("cannot become a child subreaper: a daemon a function detaches may outlive "
                    "its instance")
    helpers: frozenset[int] = frozenset()
    guard_pipe = -1
    if directories := memory.cgroup_directories():
        guard_pid, guard_pipe = guard.start(directories)
        helpers = frozenset({guard_pid})
    host = Host(memory, helpers, *budgets)
    for settings in functions:
        host.add(Pool(settings, memory, chosen, log, host))
    try:
        yield host, memory
    finally:
        await host.stop(REAP_TIMEOUT_S)
        memory.close()
        chosen.close()
        if guard_pipe >= 0:
            os.close(guard_pipe)  # the guard finds nothing left to kill, and exits
        log.info("stopped")


def _announce(log: logs.Log, listener: socket.socket, host: Host,
              memory: limits.MemoryEnforcement, chosen: sandbox.Sandbox) -> None:
    address, port = listener.getsockname()[:2]
    url = f"http://{_url_host(address)}:{port}"
    pools = list(host.pools.values())
    enforced = f"enforced by {memory.description}, sandbox {chosen.description}"
    if len(pools) == 1 and not pools[0].settings.elastic:
        config = pools[0].config
        log.info(f"serving {config.entrypoint} from {config.code_root} on {url} with "
                 f"{config.instances} instance(s) + {config.spares} spare(s), timeout "
                 f"{config.timeout_s:g} s, memory {config.memory_mb} MB {enforced}")
    else:
        log.info(f"serving {len(pools)} function(s) on {url} within {host.max_instances} "
                 f"instance(s) and {host.max_memory_mb} MB, memory {enforced}")
        for pool in pools:
            log.info(f"  {url}/{pool.name}: {pool.config.entrypoint} from "
                     f"{pool.config.code_root}, {pool.settings.min_instances}-"
                     f"{pool.config.instances} instance(s) of {pool.config.memory_mb} MB")
    if chosen.warning:
        log.warning(chosen.warning)


def _reloader(host_config: configfile.HostConfig | None, host: Host,
              memory: limits.MemoryEnforcement, chosen: sandbox.Sandbox,
              log: logs.Log) -> Callable[[str], None]:
    """What SIGHUP does: replace every instance; with --config, read the file again first."""
    def reload_code(reason: str) -> None:
        for pool in host.pools.values():
            pool.reload(reason)

    def reload_file(reason: str) -> None:
        assert host_config is not None
        try:
            fresh = configfile.load(host_config.path, host_config.command_line)
        except configfile.ConfigFileError as exc:
            log.error(f"{reason}: {exc}; still serving the functions as they were")
            return
        log.info(f"{reason}: {host_config.path} read again")
        host.reconcile(list(fresh.functions.values()),
                       lambda settings: Pool(settings, memory, chosen, log, host), log)

    return reload_code if host_config is None else reload_file


def _http_limits(config: Config) -> HttpLimits:
    return HttpLimits(max_body_bytes=config.max_request_bytes,
                      read_timeout_s=config.read_timeout_s)


async def _serve_until_stopped(server: HttpServer, host: Host, graceful_timeout_s: float,
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
        pools = list(host.every_pool())
        for pool in pools:
            pool.draining = True
        deadline = loop.time() + graceful_timeout_s

        def calls_in_progress() -> int:
            return sum(pool.calls_in_progress for pool in pools)

        while (calls_in_progress() or server.connection_count) and not forced \
                and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if calls_in_progress() and not forced:
            log.warning(f"calls still unfinished after {graceful_timeout_s:g} s; "
                        "answering them 503")
        for pool in pools:
            pool.abort_calls()
        await server.wait_closed(FORCED_CLOSE_TIMEOUT_S if forced else CLOSE_TIMEOUT_S)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def _operator_signals(reload: Callable[[str], None], host: Host,
                      log: logs.Log) -> Iterator[None]:
    """SIGHUP reloads: every instance is replaced by a fresh one that imports the code anew,
    with no call failing (with --config, after the file is read again). SIGUSR1 and SIGUSR2 log
    the pools' state. None of them stops us."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload, "SIGHUP")

    def describe(name: str) -> None:
        pools = list(host.pools.values())
        for pool in pools:
            named = f"{pool.name}: " if pool.settings.elastic else ""
            log.info(f"{name}: {named}{pool.describe()}")

    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        loop.add_signal_handler(signum, describe, signal.Signals(signum).name)
    try:
        yield
    finally:
        for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)  # on the way out they must not kill us either


def _reloading(config: Config, host: Host, single: str | None,
               log: logs.Log) -> contextlib.AbstractContextManager[None]:
    """--reload (single-function mode): new code replaces the instances once it is saved."""
    if not config.reload or single is None:
        return contextlib.nullcontext()
    pool = host.pools[single]
    return reloader.reloading(config.code_root, functools.partial(pool.reload, strict=True), log)


@contextlib.contextmanager
def _pid_file(host_config: configfile.HostConfig | None) -> Iterator[None]:
    """With --config: our pid where `sfsupervisor reload` looks for it."""
    if host_config is None:
        yield
        return
    path = configfile.pid_file(host_config.path)
    path.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


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


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
