"""One worker process and its lifecycle.

    STARTING --READY--> IDLE --dispatch--> BUSY --reply--> IDLE ...
        |                 |                  |
        +--init error, death, init deadline--+--death, deadline, bad frame--> RETIRING --> DEAD

RETIRING means the process has been told to die (or has died) and is no longer the pool's to
use; DEAD means it has been reaped. Each transition happens once, so no instance is signalled or
reported twice. The instance tells its pool what happened through the PoolHooks it was given.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any, Protocol

from supervisor import logs, pipes
from supervisor.calls import Call, Ending, Outcome
from supervisor.config import Config
from supervisor.limits import MB, ChildrenMap, InstanceMemory, MemoryEnforcement
from supervisor.sandbox import InstanceSandbox, Sandbox
from worker import protocol

_F_SETPIPE_SZ = 1031
_FRAME_PIPE_BYTES = 1024 * 1024  # fewer partial writes for megabyte bodies
# The platform retires an instance with SIGTERM and sends SIGKILL 50 ms later.
RETIRE_GRACE_S = 0.05
FRAME_EOF_GRACE_S = 0.1
_REPLIES = frozenset((protocol.RESPONSE, protocol.FAILURE, protocol.MALFORMED))
# Which bit of a reply's `output` field stands for each output pipe, stdout's first.
_OUTPUT_FLAGS = (protocol.OUTPUT_STDOUT, protocol.OUTPUT_STDERR)


class State(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RETIRING = "retiring"
    DEAD = "dead"


class PoolHooks(Protocol):
    """What an instance reports to the pool that owns it."""

    def instance_started(self, instance: Instance) -> None: ...
    def instance_ready(self, instance: Instance) -> None: ...
    def replace(self, instance: Instance, reason: str) -> None: ...
    def call_finished(self, instance: Instance) -> None: ...
    def instance_idle(self, instance: Instance) -> None: ...
    def instance_lost(self, instance: Instance, boot_failure: Outcome | None) -> None: ...
    def instance_reaped(self, instance: Instance) -> None: ...
    def deadline_set(self, deadline: float) -> None: ...


class Instance:
    """A worker process that serves one call at a time."""

    def __init__(self, ident: int, config: Config, sandbox: Sandbox,
                 enforcement: MemoryEnforcement, log: logs.Log, pool: PoolHooks,
                 call_limit: int | None = None, python: str = sys.executable) -> None:
        self.id = ident
        self.python = python  # the interpreter of its worker
        # When it last went idle (loop time): the host retires the least recently used.
        self.idle_since = 0.0
        # When it became ready (loop time), and what that cost: the time from its spawn.
        self.ready_at = 0.0
        self.start_cost_s = 0.0
        # The instance's own accounting (a cgroup, say) is made when its worker starts.
        self.memory = InstanceMemory(config.memory_mb * MB)
        self.call_limit = call_limit
        self.state = State.STARTING
        # Why the pool wants it replaced ("recycle", "reload", ...), or None: it is fresh.
        self.stale: str | None = None
        self.pid = 0
        self.request_id: str | None = None
        # The current call's deadline in the loop's time; the pool's one timer watches it.
        self.call_deadline = math.inf
        self.init_duration_s: float | None = None
        self.calls_served = 0
        # Why the instance ended: timeout, memory, crash, protocol, init_failure, recycle, ...
        self.end_reason: str | None = None
        self._config = config
        self._sandbox = sandbox
        self._share: InstanceSandbox | None = None  # its uid and /tmp, once it starts
        self._enforcement = enforcement
        self._log = log
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._call: Call | None = None
        self._call_seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._to_worker = -1
        self._from_worker = -1
        self._unsent: list[memoryview] = []
        self._unpacker = protocol.unpacker(protocol.frame_cap(config.max_response_bytes))
        self._outputs: list[logs.OutputCapture] = []
        self._exited = False
        self._started_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the worker process and send it the entry point; READY comes later.

        Whatever stops the start (no descriptors, no memory, the code root gone, a cgroup that
        cannot be made) is a failed boot: the pool retries with its backoff.
        """
        try:
            config = self._config
            self._share = self._sandbox.for_instance(self.id, config)
            self.memory = self._enforcement.for_instance(self.id, config.memory_mb,
                                                         config.max_pids)
            self._start_process()
        except Exception as exc:
            self.memory.release()
            self._release_share()
            self._log.error(f"instance {self.id} could not start a worker: {exc}", self.id)
            self.state = State.DEAD
            self.end_reason = "spawn_failure"
            failure = Outcome(Ending.RUNTIME_ERROR, detail=f"could not start a worker: {exc}")
            self._pool.instance_lost(self, failure)
            self._pool.instance_reaped(self)
            return
        self._log.debug(f"instance {self.id} started (pid {self.pid})", self.id)
        self._pool.instance_started(self)
        self._send([protocol.INIT, protocol.VERSION, self._config.entrypoint,
                    self._config.static_context(),
                    self._config.worker_limits(self.memory.needs_worker_peak),
                    self._config.function_environment(self._share.environment),
                    self._share.spec])
        self._timer = self._loop.call_later(self._config.timeout_s, self._on_init_deadline)

    def dispatch(self, call: Call) -> None:
        """Send a call to the worker; the pool's deadline sweep watches its deadline."""
        budget_s = self._config.timeout_s
        if self.calls_served == 0 and self.init_duration_s is not None:
            # As on the platform, an instance's first call pays for its initialization.
            budget_s -= self.init_duration_s
            call.init_duration_s = self.init_duration_s
        self._call_seq += 1
        self._call = call
        self.calls_served += 1
        self.request_id = request_id = call.request_id
        self.state = State.BUSY
        call.dispatched_at = time.perf_counter()
        call.instance_id = self.id
        self.memory.call_started()
        self._log.call_started(self.id, request_id, self._config.function_version)
        deadline_ms = int((time.time() + budget_s) * 1000)
        self._send_parts(protocol.pack_with_body(
            [protocol.CALL, self._call_seq, request_id, deadline_ms, call.request], call.body))
        self.call_deadline = deadline = self._loop.time() + budget_s
        self._pool.deadline_set(deadline)

    def retire(self, reason: str) -> None:
        """Stop the worker the platform's way: SIGTERM, then SIGKILL shortly after.

        `reason` is "recycle" or "shutdown".
        """
        if self.state in (State.RETIRING, State.DEAD):
            return
        self._log.debug(f"instance {self.id} retiring ({reason}, {self.calls_served} calls)",
                        self.id)
        self.end_reason = reason
        self.state = State.RETIRING
        self._cancel_timer()
        if self._call is not None:
            self._finish(Outcome(Ending.SHUTDOWN), 0)
        self._signal_group(signal.SIGTERM)
        self._loop.call_later(RETIRE_GRACE_S, self._kill_tree)

    def kill(self, reason: str) -> None:
        """SIGKILL the worker's whole tree now; `reason` becomes its end_reason."""
        if self.state in (State.RETIRING, State.DEAD):
            return
        self._log.debug(f"instance {self.id} killed ({reason})", self.id)
        self.end_reason = reason
        self.state = State.RETIRING
        self._cancel_timer()
        self._kill_tree()

    def check_memory(self, children: ChildrenMap | None) -> None:
        """The watchdog's tick: stop the instance if its tree uses more than the limit."""
        used_bytes = self.memory.sample(children)
        if used_bytes > self.memory.limit_bytes:
            self._over_memory(used_bytes)

    # -- process plumbing --------------------------------------------------------------------

    def _start_process(self) -> None:
        opened: list[int] = []  # every descriptor made here, closed again if the start fails
        try:
            self._start_worker(opened)
        except BaseException:
            if self._process is not None and self._process.returncode is None:
                self._process.kill()
                self._process.wait()
            for fd in opened:
                _close_quietly(fd)
            raise

    def _start_worker(self, opened: list[int]) -> None:
        to_worker_r, to_worker_w = _pipe(opened)
        from_worker_r, from_worker_w = _pipe(opened)
        stdout_r, stdout_w = _pipe(opened)
        stderr_r, stderr_w = _pipe(opened)
        argv = [self.python, "-P", "-m", "worker",
                str(to_worker_r), str(from_worker_w), str(os.getpid())]
        self._process = subprocess.Popen(
            self.memory.command(argv),
            cwd=self._config.code_root,
            env=self._sandbox.environment_for(self.python),
            stdin=subprocess.DEVNULL,
            stdout=stdout_w,
            stderr=stderr_w,
            pass_fds=(to_worker_r, from_worker_w),
            start_new_session=True,
        )
        for fd in (to_worker_r, from_worker_w, stdout_w, stderr_w):
            opened.remove(fd)
            os.close(fd)
        self.pid = self._process.pid
        self._pidfd = os.pidfd_open(self.pid)
        opened.append(self._pidfd)
        self.memory.started(self.pid)
        self._started_at = self._loop.time()
        self._to_worker, self._from_worker = to_worker_w, from_worker_r
        for fd in (to_worker_w, from_worker_r):
            os.set_blocking(fd, False)
            _grow_pipe(fd)
        self._outputs = [
            logs.OutputCapture(stdout_r, "stdout", self, self._log, self._loop),
            logs.OutputCapture(stderr_r, "stderr", self, self._log, self._loop),
        ]
        self._loop.add_reader(from_worker_r, self._on_frames_readable)
        self._loop.add_reader(self._pidfd, self._on_exit)
        if self.memory.oom_events_fd >= 0:
            self._loop.add_reader(self.memory.oom_events_fd, self._on_oom_kill)
        opened.clear()  # from here on the instance owns them

    def _kill_tree(self) -> None:
        if self._process is None or self._process.returncode is not None:
            return  # reaped: the pid may already name another process
        self._signal_group(signal.SIGKILL)
        self.memory.kill_all()

    def _signal_group(self, signum: int) -> None:
        # The worker leads its own process group (start_new_session), and its pid stays
        # reserved until we reap it, so the group id cannot name someone else's processes.
        if self._process is None or self._process.returncode is not None:
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def _send(self, frame: list[Any]) -> None:
        self._send_parts([protocol.pack(frame)])

    def _send_parts(self, parts: list[bytes]) -> None:
        """Write a frame's buffers to the worker; what the pipe does not take waits, uncopied,
        until it does."""
        if self._unsent:
            self._unsent += map(memoryview, parts)
            return
        try:
            written = os.writev(self._to_worker, parts)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # the worker is gone; its exit is handled by _on_exit
        if written < (len(parts[0]) if len(parts) == 1 else sum(map(len, parts))):
            self._unsent = _after([memoryview(part) for part in parts], written)
            self._loop.add_writer(self._to_worker, self._write_unsent)

    def _write_unsent(self) -> None:
        try:
            written = os.writev(self._to_worker, self._unsent)
        except BlockingIOError:
            return
        except OSError:
            written = sum(map(len, self._unsent))
        self._unsent = _after(self._unsent, written)
        if not self._unsent:
            self._loop.remove_writer(self._to_worker)

    def read_replies(self) -> None:
        """Handle what the worker has sent so far, without waiting for the loop to report it."""
        if self.state is State.BUSY and self._from_worker >= 0:
            self._on_frames_readable()

    def _on_frames_readable(self) -> bool:
        """Read and handle what the worker sent; True if more may be waiting."""
        try:
            data = pipes.read(self._from_worker)
        except BlockingIOError:
            return False
        except OSError:
            data = memoryview(b"")
        if not data:
            self._loop.remove_reader(self._from_worker)
            if not self._exited:
                # A dying worker closes its pipes a moment before its pidfd fires: wait for
                # that, so that an exit is reported as the crash it is.
                self._loop.call_later(FRAME_EOF_GRACE_S, self._frame_pipe_closed)
            return False
        try:
            self._unpacker.feed(data)
            for frame in self._unpacker:
                self._handle_frame(frame)
        except Exception as exc:  # the bytes are the worker's: any decoding error is its fault
            self._protocol_violation(f"{type(exc).__name__}: {exc or 'bytes that are not msgpack'}")
        return len(data) == pipes.READ_BYTES

    def _frame_pipe_closed(self) -> None:
        if not self._exited:
            self._protocol_violation("the worker closed its frame pipe")

    def _handle_frame(self, frame: Any) -> None:
        state = self.state
        if state is State.RETIRING or state is State.DEAD:
            return  # a reply that lost the race against a kill
        if type(frame) is list and len(frame) >= 5 and frame[0] in _REPLIES:
            seq = frame[1]
            if state is State.BUSY and seq == self._call_seq:
                outcome = _reply_outcome(frame)
                if outcome is not None:
                    self._complete(outcome, frame[2], frame[3])
                    return
            elif type(seq) is int and seq <= self._call_seq:
                self._stray_reply(seq)
                return
        match frame:
            case [protocol.READY, protocol.VERSION, int() | float() as init_ms] \
                    if state is State.STARTING:
                self._ready(init_ms / 1000)
            case [protocol.INIT_ERROR, dict(error)] if state is State.STARTING:
                self._boot_failed(Outcome(Ending.INIT_ERROR, _clean_error(error)))
            case _:
                self._protocol_violation(f"unexpected frame {_describe(frame)}")

    def _is_current(self, seq: int) -> bool:
        return self.state is State.BUSY and seq == self._call_seq

    def _stray_reply(self, seq: int) -> None:
        """A second reply to a finished call: most likely a child the function forked, which
        returned into the runtime's loop. The current call is not to blame, so it goes on; the
        instance, no longer to be trusted, is replaced once a fresh one is ready."""
        if self.stale == "stray_reply":
            return
        self._log.warning(f"instance {self.id} answered call {seq} again (a forked child of the "
                          "function?); replacing it", self.id)
        self._pool.replace(self, "stray_reply")

    # -- events --------------------------------------------------------------------------------

    def _ready(self, init_s: float) -> None:
        self._cancel_timer()
        # The worker measures its own import; it cannot have taken longer than we waited.
        self.ready_at = self._loop.time()
        self.start_cost_s = self.ready_at - self._started_at
        self.init_duration_s = min(max(init_s, 0.0), self.start_cost_s)
        self.state = State.IDLE
        self._log.info(
            f"instance {self.id} ready (pid {self.pid}, init {self.init_duration_s * 1000:.1f} ms)",
            self.id)
        self._pool.instance_ready(self)

    def _complete(self, outcome: Outcome, reported_peak_kb: int, output: Any) -> None:
        """The worker answered the current call: the instance takes the next waiting call
        first, so that the worker runs it while the answer of this one is written."""
        call = self._end_call(self.memory.call_peak_kb(reported_peak_kb), output)
        if self.state is State.BUSY and not self._exited:
            self.state = State.IDLE
            self._pool.instance_idle(self)
        call.resolve(outcome)

    def _finish(self, outcome: Outcome, peak_kb: int, output: Any = None) -> None:
        """End the current call and hand its outcome over."""
        self._end_call(peak_kb, output).resolve(outcome)

    def _end_call(self, peak_kb: int, output: Any) -> Call:
        """The current call's bookkeeping; its output is logged first, before its END line.

        `output` says which output pipes still hold what the call wrote (the worker's word on
        it, worker/protocol.py; None when there is none): those are read to the end first.
        """
        call = self._call
        assert call is not None
        self.call_deadline = math.inf
        stdout, stderr = self._outputs
        if output != 0 or stdout.holds_partial_line or stderr.holds_partial_line:
            for capture, flag in zip(self._outputs, _OUTPUT_FLAGS, strict=False):
                capture.end_call(drain=not isinstance(output, int) or bool(output & flag))
        call.finished_at = time.perf_counter()
        call.peak_kb = peak_kb
        self._call = None
        self.request_id = None
        self._pool.call_finished(self)
        return call

    def deadline_passed(self) -> None:
        """The call's deadline has passed: kill the instance, the call times out."""
        if self.state is not State.BUSY:
            return
        # Read before the kill: a cgroup's peak, or the sampled tree's, beats the worker's own.
        peak_kb = self.memory.call_peak_kb(_resident_kb(self.pid))
        self.kill("timeout")
        self._finish(Outcome(Ending.TIMEOUT), peak_kb)
        self._pool.instance_lost(self, None)

    def _over_memory(self, used_bytes: int) -> None:
        limit_mb = self.memory.limit_bytes // MB
        self._log.warning(f"instance {self.id} uses {used_bytes / MB:.0f} MB, more than the "
                          f"{limit_mb} MB limit; killing it", self.id)
        was_starting = self.state is State.STARTING
        self.kill("memory")
        outcome = Outcome(Ending.MEMORY, detail=_memory_message(limit_mb, used_bytes // MB))
        if self._call is not None:
            self._finish(outcome, used_bytes // 1024)
        self._pool.instance_lost(self, outcome if was_starting else None)

    def _on_oom_kill(self) -> None:
        self._loop.remove_reader(self.memory.oom_events_fd)
        if self.state in (State.STARTING, State.IDLE, State.BUSY):
            self._over_memory(self.memory.limit_bytes)

    def _on_init_deadline(self) -> None:
        self._timer = None
        self._log.warning(
            f"instance {self.id} did not initialize within {self._config.timeout_s:g} s", self.id)
        self._boot_failed(Outcome(Ending.TIMEOUT, detail="initialization timed out"))

    def _boot_failed(self, failure: Outcome) -> None:
        self.kill("init_failure")
        self._pool.instance_lost(self, failure)

    def _protocol_violation(self, reason: str) -> None:
        if self.state in (State.RETIRING, State.DEAD):
            return
        self._log.error(f"instance {self.id} sent an invalid frame ({reason}); killing it",
                        self.id)
        was_starting = self.state is State.STARTING
        self.kill("protocol")
        if self._call is not None:
            message = f"the instance broke the runtime protocol ({reason}) and was replaced"
            self._finish(Outcome(Ending.PROTOCOL_ERROR, detail=message), 0)
        failure = Outcome(Ending.RUNTIME_ERROR, detail=reason) if was_starting else None
        self._pool.instance_lost(self, failure)

    def _on_exit(self) -> None:
        """The worker process is gone: settle its call, clean up, reap it."""
        self._exited = True
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        # Whatever it left behind in its group or cgroup; its pid stays reserved until wait().
        self._kill_tree()
        while self._from_worker >= 0 and self._on_frames_readable():
            pass  # a reply sent just before the exit still counts
        assert self._process is not None
        returncode = self._process.wait()
        for output in self._outputs:
            output.close()
        self._close_frame_pipes()
        previous, self.state = self.state, State.DEAD
        self._cancel_timer()
        if previous in (State.STARTING, State.IDLE, State.BUSY):
            self._died(previous, returncode)
        # Each capture names this instance as its source: dropped now, the dead instance is
        # freed at once rather than by an occasional full collection of the cycle collector.
        self._outputs = []
        if self.memory.oom_events_fd >= 0:
            self._loop.remove_reader(self.memory.oom_events_fd)
        self.memory.release()
        self._release_share()
        self._log.debug(f"instance {self.id} reaped ({_describe_exit(returncode)})", self.id)
        self._pool.instance_reaped(self)

    def _died(self, previous: State, returncode: int) -> None:
        """The worker died on its own (or the kernel killed it): settle what it was doing."""
        when = "during initialization" if previous is State.STARTING else "while handling the call"
        self.end_reason = "init_failure" if previous is State.STARTING else "crash"
        if self.memory.oom_killed():
            self.end_reason = "memory"
            limit_mb = self.memory.limit_bytes // MB
            outcome = Outcome(Ending.MEMORY, detail=_memory_message(limit_mb, limit_mb))
            self._log.warning(f"instance {self.id} ran out of memory ({limit_mb} MB limit) "
                              f"and was killed by the kernel", self.id)
        else:
            outcome = Outcome(Ending.CRASH,
                              detail=f"the instance {_describe_exit(returncode)} {when}")
            self._log.warning(f"instance {self.id} {_describe_exit(returncode)}", self.id)
        if previous is State.STARTING:
            self._pool.instance_lost(self, outcome)
            return
        if self._call is not None:
            self._finish(outcome, self.memory.call_peak_kb(0))
        self._pool.instance_lost(self, None)

    def _release_share(self) -> None:
        if self._share is not None:
            self._share.release(emptied=self.memory.tracks_every_process
                                or self._sandbox.tier == "ns")
            self._share = None

    def _close_frame_pipes(self) -> None:
        if self._from_worker >= 0:
            self._loop.remove_reader(self._from_worker)
            os.close(self._from_worker)
            self._from_worker = -1
        if self._to_worker >= 0:
            self._loop.remove_writer(self._to_worker)
            os.close(self._to_worker)
            self._to_worker = -1

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _reply_outcome(frame: list[Any]) -> Outcome | None:
    """The outcome a well-formed reply [kind, call_id, peak_kb, output, ...] stands for; None
    when the frame is not one.

    Only the frame's shape is checked here; responses.render checks a response's content.
    """
    if type(frame[2]) is not int:
        return None
    kind = frame[0]
    if kind == protocol.RESPONSE and len(frame) == 7:
        return Outcome(Ending.OK, (frame[4], frame[5], frame[6]))
    if kind == protocol.FAILURE and len(frame) == 5 and type(frame[4]) is dict:
        return Outcome(Ending.FUNCTION_ERROR, _clean_error(frame[4]))
    if kind == protocol.MALFORMED and len(frame) == 6 and type(frame[4]) is str \
            and type(frame[5]) is str:
        return Outcome(Ending.MALFORMED, frame[5], frame[4])
    return None


def _after(views: list[memoryview], written: int) -> list[memoryview]:
    """What is left of the buffers once `written` bytes of them went out."""
    while views and written >= len(views[0]):
        written -= len(views.pop(0))
    if views and written:
        views[0] = views[0][written:]
    return views


def _pipe(opened: list[int]) -> tuple[int, int]:
    read_end, write_end = os.pipe()
    opened.extend((read_end, write_end))
    return read_end, write_end


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _FRAME_PIPE_BYTES)
    except OSError:
        pass  # a smaller pipe only means more partial writes


def _clean_error(error: dict[Any, Any]) -> dict[str, Any]:
    """The platform's error object rebuilt from a worker's: only strings get through."""
    stack = error.get("stackTrace")
    return protocol.error(
        str(error.get("errorMessage", "")),
        str(error.get("errorType", "Error")),
        [str(line) for line in stack] if isinstance(stack, list) else None,
    )


def _memory_message(limit_mb: int, used_mb: int) -> str:
    return (f"the function used more than its {limit_mb} MB memory limit ({used_mb} MB); "
            "its instance was stopped and replaced")


def _describe(frame: Any) -> str:
    text = repr(frame)
    return text if len(text) <= 200 else text[:200] + "..."


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with code {returncode}"


def _resident_kb(pid: int) -> int:
    """A process's peak resident memory (VmHWM) in kB, or 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
