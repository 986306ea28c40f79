"""The pool: one FIFO of waiting calls, a set of idle instances, and the instances' upkeep.

Data flow of one call (who sends what to whom, and what guards each step):

    http.FunctionApp --Pool.run(call)--> an idle instance?
        yes: Instance.dispatch(call) -- CALL frame --> worker        deadline: loop.call_at
        no:  the call waits in _waiting (FIFO, in arrival order)
    worker -- RESULT / FAILURE frame --> Instance --> call.future    the deadline is cancelled
        --> Pool.instance_idle: the instance takes the oldest waiting call, or goes idle
    deadline passed: Instance kills the worker's process group, the call gets TIMEOUT,
        --> Pool.instance_lost: a replacement is spawned at once
    worker died (pidfd readable): the call gets CRASH --> Pool.instance_lost, as above

Instances are pulled from one idle list rather than fed through per-instance queues, so no call
waits behind a slow one while another instance is free. At most `instances` calls run at once;
`spares` more instances stay initialized and idle, so that the call after a crash, a timeout or
a memory kill finds a warm instance instead of waiting for a cold import. The idle list is a
stack: the instance that finished last serves next, and spares stay spare.

Limits: without a memory cgroup, a watchdog timer samples every live instance's process tree
each millisecond while any is starting or busy. `max_calls` recycles an instance after that many
calls (less a random tenth, so instances do not all restart together), one at a time, the
replacement ready before the old one goes. Whatever a dead instance left behind is killed and
reaped by the OrphanReaper.

Booting: a new instance reports READY once the entry point has imported. When instances fail
to boot (the import raises, the process dies, the import outlives the timeout), the pool keeps
the failure as the answer for calls that have no instance to wait for, and tries again with one
instance at a time after an exponential, jittered, capped backoff: a broken function costs a
retry every few seconds, not a core, and fixing the code needs no restart.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections import deque

from supervisor import logs
from supervisor.calls import Call, Ending, Outcome
from supervisor.config import Config
from supervisor.instance import Instance, State
from supervisor.limits import MemoryEnforcement, OrphanReaper, children_map

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
WATCHDOG_INTERVAL_S = 0.001
# Every this many watchdog ticks, /proc is scanned for processes new to the instances' trees.
TREE_RESCAN_TICKS = 50
# Orphans of dead instances are looked for at most this often (a look scans /proc).
ORPHAN_SWEEP_DELAY_S = 0.05
_USABLE = (State.STARTING, State.IDLE, State.BUSY)
_ACTIVE = (State.STARTING, State.BUSY)


class Pool:
    """Keeps the workers running and hands each call to a free one."""

    def __init__(self, config: Config, memory: MemoryEnforcement, log: logs.Log) -> None:
        self._config = config
        self._memory = memory
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._environment = config.worker_environment()
        self._instances: dict[int, Instance] = {}
        self._idle: list[Instance] = []
        self._waiting: deque[Call] = deque()
        self._busy = 0
        self._next_id = 1
        self._boot_failure: Outcome | None = None
        self._boot_failures = 0
        self._retry_timer: asyncio.TimerHandle | None = None
        self._watchdog_timer: asyncio.TimerHandle | None = None
        self._watchdog_ticks = 0
        self._queue_timer: asyncio.TimerHandle | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._recycling: Instance | None = None
        self._replacement: Instance | None = None
        self._reaper = OrphanReaper(self._loop)
        # Instances replaced, by end_reason (for metrics).
        self.restarts: collections.Counter[str] = collections.Counter()
        self._started_at = 0.0
        self._announced_ready = False
        self._stopping = False
        # Set when the supervisor stops accepting connections: readiness turns 503.
        self.draining = False
        self._all_reaped = asyncio.Event()

    def start(self) -> None:
        """Spawn the instances; calls may arrive at once and wait for the first READY."""
        self._started_at = self._loop.time()
        self._fill()

    def submit(self, call: Call) -> None:
        """Start the call on a free instance, or queue it; its outcome comes in call.future.

        Admission: when the queue already holds max_queue calls, the call is rejected at once
        (the platform's 429) rather than left to wait without bound.
        """
        if self._stopping:
            call.resolve(Outcome(Ending.SHUTDOWN))
        elif self._idle and self._busy < self._config.instances:
            self._dispatch(self._idle.pop(), call)
        elif self._boot_failure is not None and not self._has_instance_to_wait_for():
            call.resolve(self._boot_failure)
        elif len(self._waiting) >= self._config.max_queue:
            detail = (f"too many calls in progress: {self._busy} running and "
                      f"{len(self._waiting)} waiting (--max-queue {self._config.max_queue})")
            call.resolve(Outcome(Ending.REJECTED, detail=detail))
        else:
            call.queued_at = time.perf_counter()
            self._waiting.append(call)
            if self._queue_timer is None:
                self._arm_queue_timer()

    def withdraw(self, call: Call) -> None:
        """The client went away: a call that is still waiting leaves the queue unrun."""
        if call.dispatched_at is None and call in self._waiting:
            self._waiting.remove(call)
            call.resolve(Outcome(Ending.CANCELLED))

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def boot_failure(self) -> Outcome | None:
        """The latest initialization failure, while no boot has succeeded since."""
        return self._boot_failure

    def is_ready(self) -> bool:
        """Whether a call could run now or soon: an instance is initialized, none is failing."""
        return not self.draining and self._boot_failure is None and any(
            i.state in (State.IDLE, State.BUSY) for i in self._instances.values())

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    def abort_calls(self) -> None:
        """Stopping: answer waiting calls with SHUTDOWN and retire every instance."""
        self._stopping = True
        for timer in (self._retry_timer, self._watchdog_timer, self._sweep_timer,
                      self._queue_timer):
            if timer is not None:
                timer.cancel()
        self._fail_waiting(Outcome(Ending.SHUTDOWN))
        for instance in list(self._instances.values()):
            instance.retire("shutdown")

    async def stop(self, timeout_s: float) -> None:
        """Retire every instance and wait (at most timeout_s) until all are reaped."""
        self.abort_calls()
        if self._instances:
            try:
                await asyncio.wait_for(self._all_reaped.wait(), timeout_s)
            except TimeoutError:
                self._log.error(f"{len(self._instances)} instance(s) not reaped in time")
        self._reaper.sweep(children_map(), keep=set())

    # -- hooks called by instances -------------------------------------------------------------

    def instance_ready(self, instance: Instance) -> None:
        self._boot_failure = None
        self._boot_failures = 0
        self._announce_if_all_ready()
        if instance is self._replacement:
            self._finish_recycling()
        self._fill()
        self.instance_idle(instance)

    def call_finished(self, instance: Instance) -> None:
        self._busy -= 1

    def instance_idle(self, instance: Instance) -> None:
        if instance.call_limit is not None and instance.calls_served >= instance.call_limit:
            if instance is self._recycling and self._replacement is None:
                self._retire_recycled(instance)
                self._recycling = None
                self._fill()
                return
            if self._recycling is None:
                self._start_recycling(instance)
        self._idle.append(instance)
        self._pump()

    def instance_lost(self, instance: Instance, boot_failure: Outcome | None) -> None:
        self.restarts[instance.end_reason or "unknown"] += 1
        if instance in self._idle:
            self._idle.remove(instance)
        if instance is self._recycling or instance is self._replacement:
            self._recycling = self._replacement = None  # the survivor serves on as usual
        if boot_failure is not None:
            self._boot_failed(instance, boot_failure)
        self._fill()
        self._pump()

    def instance_reaped(self, instance: Instance) -> None:
        self._instances.pop(instance.id, None)
        if not self._instances:
            self._all_reaped.set()
        if self._sweep_timer is None and not self._stopping:
            self._sweep_timer = self._loop.call_later(ORPHAN_SWEEP_DELAY_S, self._sweep_orphans)

    # -- dispatch --------------------------------------------------------------------------------

    def _dispatch(self, instance: Instance, call: Call) -> None:
        self._busy += 1
        instance.dispatch(call)
        self._watch_memory()

    def _pump(self) -> None:
        """Start waiting calls while there are idle instances and room to run them."""
        while self._waiting and self._idle and self._busy < self._config.instances:
            self._dispatch(self._idle.pop(), self._waiting.popleft())

    def _arm_queue_timer(self) -> None:
        """One timer for the oldest waiting call: the queue is FIFO and every call waits at
        most the same timeout, so no younger call can expire first."""
        self._queue_timer = None
        if self._waiting:
            oldest = self._waiting[0].queued_at or 0.0
            wait_s = oldest + self._config.timeout_s - time.perf_counter()
            self._queue_timer = self._loop.call_later(max(0.0, wait_s), self._expire_waiting)

    def _expire_waiting(self) -> None:
        expired_before = time.perf_counter() - self._config.timeout_s
        while self._waiting and (self._waiting[0].queued_at or 0.0) <= expired_before:
            call = self._waiting.popleft()
            detail = (f"no instance became free within the {self._config.timeout_s:g} s timeout"
                      f" ({self._busy} calls running, {len(self._waiting)} waiting)")
            call.resolve(Outcome(Ending.REJECTED, detail=detail))
        self._arm_queue_timer()

    def _fail_waiting(self, outcome: Outcome) -> None:
        while self._waiting:
            self._waiting.popleft().resolve(outcome)

    # -- upkeep ----------------------------------------------------------------------------------

    def _fill(self) -> None:
        """Spawn instances up to instances + spares (one at a time while boots fail)."""
        if self._stopping:
            return
        usable = [i for i in self._instances.values() if i.state in _USABLE]
        missing = self._config.instances + self._config.spares - len(usable)
        if self._recycling is not None:
            missing += 1  # the instance being recycled is on its way out
        if self._boot_failure is not None:
            if self._retry_timer is not None or any(i.state is State.STARTING for i in usable):
                return
            missing = min(missing, 1)
        for _ in range(missing):
            self._spawn()

    def _spawn(self) -> Instance:
        ident = self._next_id
        self._next_id += 1
        instance = Instance(ident, self._config, self._environment,
                            self._memory.for_instance(ident), self._log, self,
                            _call_limit(self._config.max_calls))
        self._instances[ident] = instance
        self._all_reaped.clear()
        instance.spawn()
        self._watch_memory()
        return instance

    def _start_recycling(self, instance: Instance) -> None:
        self._log.info(f"instance {instance.id} served {instance.calls_served} calls; "
                       "recycling it once its replacement is ready", instance.id)
        self._recycling = instance
        self._replacement = self._spawn()

    def _finish_recycling(self) -> None:
        old, self._recycling, self._replacement = self._recycling, None, None
        if old is None:
            return
        if old.state is State.IDLE:
            self._idle.remove(old)
            self._retire_recycled(old)
        elif old.state is State.BUSY:
            self._recycling = old  # retired when its call ends (see instance_idle)

    def _retire_recycled(self, instance: Instance) -> None:
        instance.retire("recycle")
        self.restarts["recycle"] += 1

    def _boot_failed(self, instance: Instance, failure: Outcome) -> None:
        if failure != self._boot_failure:
            self._log.error(f"instance {instance.id} failed to initialize: "
                            f"{_describe_failure(failure)}", instance.id)
        self._boot_failure = failure
        self._boot_failures += 1
        if self._retry_timer is None and not self._stopping:
            delay_s = _backoff_s(self._boot_failures)
            self._log.warning(f"initialization failing; next try in {delay_s:.1f} s")
            self._retry_timer = self._loop.call_later(delay_s, self._retry_boot)
        if not self._has_instance_to_wait_for():
            self._fail_waiting(failure)

    def _retry_boot(self) -> None:
        self._retry_timer = None
        self._fill()

    def _has_instance_to_wait_for(self) -> bool:
        return any(i.state in _USABLE for i in self._instances.values())

    def _watch_memory(self) -> None:
        if self._watchdog_timer is None and self._memory.uses_watchdog and not self._stopping:
            self._watchdog_timer = self._loop.call_later(WATCHDOG_INTERVAL_S, self._watchdog)

    def _watchdog(self) -> None:
        self._watchdog_timer = None
        self._watchdog_ticks += 1
        children = children_map() if self._watchdog_ticks % TREE_RESCAN_TICKS == 0 else None
        active = False
        for instance in list(self._instances.values()):
            if instance.state in _USABLE:
                instance.check_memory(children)
                active = active or instance.state in _ACTIVE
        if active:
            self._watch_memory()

    def _sweep_orphans(self) -> None:
        self._sweep_timer = None
        children = children_map()
        live = [i for i in self._instances.values() if i.state is not State.DEAD]
        self._reaper.sweep(children, keep={pid for i in live for pid in i.memory.pids(children)})
        self._memory.remove_released()

    def _announce_if_all_ready(self) -> None:
        if self._announced_ready:
            return
        ready = sum(1 for i in self._instances.values() if i.state in (State.IDLE, State.BUSY))
        if ready >= self._config.instances + self._config.spares:
            self._announced_ready = True
            elapsed_ms = (self._loop.time() - self._started_at) * 1000
            self._log.info(f"all {ready} instances ready in {elapsed_ms:.0f} ms")


def _call_limit(max_calls: int) -> int | None:
    """An instance's own call limit: max_calls less up to a tenth, so restarts spread out."""
    if max_calls <= 0:
        return None
    return max_calls - random.randint(0, max_calls // 10)


def _backoff_s(failures: int) -> float:
    """Exponential in the number of failed boots, capped, with jitter against lockstep."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures - 1))
    return ceiling * random.uniform(0.5, 1.0)


def _describe_failure(failure: Outcome) -> str:
    if failure.ending is Ending.INIT_ERROR:
        error = failure.value
        trace = "".join(error["stackTrace"] or [])
        return f"{error['errorType']}: {error['errorMessage']}" + (f"\n{trace}" if trace else "")
    return failure.detail or failure.ending.value
