"""The pool: one FIFO of waiting calls, a set of idle instances, and the instances' upkeep.

Data flow of one call (who sends what to whom, and what guards each step):

    http.FunctionApp --Pool.submit(call)--> an idle instance?
        yes: Instance.dispatch(call) -- CALL frame --> worker        deadline: the one sweep
        no:  the call waits in _waiting (FIFO, in arrival order)     timer (deadlines.py)
    worker -- RESPONSE / FAILURE / MALFORMED frame --> Instance --> call.on_done
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
each millisecond while any is starting or busy. Whatever a dead instance left behind is killed
and reaped by the host (host.py), which knows every pool's instances.

Sizes: a fixed pool (single-function mode) keeps `instances` + `spares` initialized. An elastic
pool (--config) keeps min_instances, starts an instance for a call that finds none idle while
it is under its max_instances and the host grants the room (host.py), and retires instances
idle for idle_timeout down to min_instances.

Replacing: an instance marked stale (it served its `max_calls`, less a random tenth so that
instances do not all restart together; it sent a stray frame; or a reload asked for fresh code)
keeps serving until a fresh instance is ready, and retires once the ready instances outnumber
the pool's size without it. So a reload or a recycle never leaves a call without an instance,
and a reload whose new code fails to import leaves the old instances serving.

Admission: a call that cannot start at once waits, unless --max-queue calls already wait or
their request bodies already hold --max-queue-mb: then it gets 429 at once. A waiting call that
outlives the timeout gets 429, except a background (`?integration=async`) call: its caller was
promised that it runs.

Booting: a new instance reports READY once the entry point has imported. At the pool's start the
spares begin their import only once the other instances are ready: the imports share the CPU,
and on a machine with fewer cores than instances a spare's would delay the first call (4
instances and a spare on 2 cores: five imports at once). When instances fail to boot (the import
raises, the process dies, the import outlives the timeout), the pool keeps the failure as the
answer for calls that have no instance to wait for, and tries again with one instance at a time
after an exponential, jittered, capped backoff: a broken function costs a retry every few
seconds, not a core, and fixing the code needs no restart.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import time
from collections import deque
from typing import TYPE_CHECKING

from supervisor import logs
from supervisor.calls import Call, Ending, Outcome
from supervisor.config import MB, Config, FunctionSettings
from supervisor.deadlines import DeadlineSweep
from supervisor.instance import Instance, State
from supervisor.limits import ChildrenMap, MemoryEnforcement, children_map
from supervisor.sandbox import Sandbox

if TYPE_CHECKING:
    from supervisor.host import Host

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
WATCHDOG_INTERVAL_S = 0.001
# Every this many watchdog ticks, /proc is scanned for processes new to the instances' trees.
TREE_RESCAN_TICKS = 50
# While calls are being refused, the busy workers' pipes are read at most this often.
REPLY_POLL_INTERVAL_S = 0.0001
_USABLE = (State.STARTING, State.IDLE, State.BUSY)
# Why an instance may be stale that lets it take no new call: it retires as soon as it is idle.
_STRICT = ("code_change", "removed")
_ACTIVE = (State.STARTING, State.BUSY)


class Pool:
    """Keeps one function's workers running and hands each call to a free one."""

    def __init__(self, settings: FunctionSettings, memory: MemoryEnforcement, sandbox: Sandbox,
                 log: logs.Log, host: Host) -> None:
        self.name = settings.name
        self._settings = settings
        self._config = settings.config
        self._host = host
        self._memory = memory
        self._sandbox = sandbox
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._instances: dict[int, Instance] = {}
        self._idle: list[Instance] = []
        self._waiting: deque[Call] = deque()
        self._waiting_bytes = 0
        self._busy = 0
        self._boot_failure: Outcome | None = None
        self._boot_failures = 0
        self._retry_timer: asyncio.TimerHandle | None = None
        self._watchdog_timer: asyncio.TimerHandle | None = None
        self._watchdog_ticks = 0
        self._queue_timer: asyncio.TimerHandle | None = None
        self._replies_polled_at = 0.0
        # When workers last started failing to start at all (None: the last start worked).
        self._starts_failing_since: float | None = None
        self._deadlines = DeadlineSweep(self._loop, self._instances.values)
        # Instances say when their call's deadline is (PoolHooks): straight to the sweep.
        self.deadline_set = self._deadlines.watch
        # Instances replaced, by end_reason (for metrics).
        self.restarts: collections.Counter[str] = collections.Counter()
        self._started_at = 0.0
        self._announced_ready = False
        # Spares start once the pool's own instances first are ready (see Booting).
        self._spares_due = False
        self._stopping = False
        # Set when the supervisor stops accepting connections: readiness turns 503.
        self.draining = False
        self._all_reaped = asyncio.Event()

    def start(self) -> None:
        """Spawn the instances; calls may arrive at once and wait for the first READY."""
        self._started_at = self._loop.time()
        self._fill()

    @property
    def settings(self) -> FunctionSettings:
        return self._settings

    @property
    def config(self) -> Config:
        return self._config

    @property
    def memory_mb(self) -> int:
        """The memory limit of each of its instances: its share of the host's budget."""
        return self._config.memory_mb

    def submit(self, call: Call) -> None:
        """Start the call on a free instance, or queue it; its outcome goes to call.on_done.

        Admission: when the queue already holds max_queue calls, the call is rejected at once
        (the platform's 429) rather than left to wait without bound.
        """
        full = self._is_full(call.held_bytes)
        if full:
            self._collect_replies()
            full = self._is_full(call.held_bytes)
        if self._stopping:
            call.resolve(Outcome(Ending.SHUTDOWN))
        elif self._idle and self._busy < self._config.instances:
            self._dispatch(self._idle.pop(), call)
        elif self._boot_failure is not None and not self._has_instance_to_wait_for():
            call.resolve(self._boot_failure)
        elif full:
            call.resolve(Outcome(Ending.REJECTED, detail=self._full_reason(call.held_bytes)))
        else:
            call.queued_at = time.perf_counter()
            self._waiting.append(call)
            self._waiting_bytes += call.held_bytes
            if self._queue_timer is None:
                self._arm_queue_timer()
            if self._settings.elastic:
                self._fill()  # the call needs an instance: start one if there is room

    def refusal(self, held_bytes: int) -> str | None:
        """Why a call holding `held_bytes` would be refused at once (429), or None.

        For the HTTP layer, to answer before it reads a request's body.
        """
        if not self._is_full(held_bytes):
            return None
        self._collect_replies()
        if self._stopping or (self._idle and self._busy < self._config.instances) or (
                self._boot_failure is not None and not self._has_instance_to_wait_for()):
            return None  # it runs at once, or gets an answer other than 429
        return self._full_reason(held_bytes) if self._is_full(held_bytes) else None

    @property
    def calls_in_progress(self) -> int:
        """Calls running or waiting."""
        return self._busy + len(self._waiting)

    def _is_full(self, held_bytes: int) -> bool:
        """Whether a call holding `held_bytes` could not wait: the queue is full."""
        waiting = self._waiting
        return len(waiting) >= self._config.max_queue or (
            bool(waiting) and self._waiting_bytes + held_bytes > self._config.max_queue_bytes)

    def _full_reason(self, held_bytes: int) -> str:
        config = self._config
        running = f"too many calls in progress: {self._busy} running and {len(self._waiting)}"
        if len(self._waiting) >= config.max_queue:
            return f"{running} waiting (--max-queue {config.max_queue})"
        return (f"{running} waiting, whose requests hold {self._waiting_bytes / MB:.1f} MB "
                f"(--max-queue-mb {config.max_queue_bytes / MB:g})")

    def _collect_replies(self) -> None:
        """Handle the replies already waiting in busy workers' pipes, before refusing a call.

        Under overload, one loop iteration serves hundreds of connections and would read a
        worker's reply, and give it the next waiting call, only once per iteration: the
        instances would idle while the loop writes 429s. Looking at their pipes between
        refusals (at most every REPLY_POLL_INTERVAL_S) keeps them busy.
        """
        now = time.perf_counter()
        if now - self._replies_polled_at < REPLY_POLL_INTERVAL_S:
            return
        self._replies_polled_at = now
        for instance in [i for i in self._instances.values() if i.state is State.BUSY]:
            instance.read_replies()

    def withdraw(self, call: Call) -> None:
        """The client went away: a call that is still waiting leaves the queue unrun."""
        if call.dispatched_at is None and call in self._waiting:
            self._waiting.remove(call)
            self._waiting_bytes -= call.held_bytes
            call.resolve(Outcome(Ending.CANCELLED))

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def boot_failure(self) -> Outcome | None:
        """The latest initialization failure, while no boot has succeeded since."""
        return self._boot_failure

    def is_ready(self) -> bool:
        """Whether a call could run now: an instance is initialized (or, elastic without
        min_instances, one may be started for it) and we are not stopping."""
        if self.draining:
            return False
        if self._settings.elastic and not self._settings.min_instances:
            return self._boot_failure is None
        return any(i.state in (State.IDLE, State.BUSY) for i in self._instances.values())

    def is_live(self) -> bool:
        """False once no worker could be started for unhealthy_after_s and none is left:
        then only a restart of the supervisor can help (an orchestrator's liveness probe)."""
        since = self._starts_failing_since
        return (since is None or self._loop.time() - since < self._config.unhealthy_after_s
                or self._has_instance_to_wait_for())

    def reload(self, reason: str, strict: bool = False) -> None:
        """Replace every instance with a fresh one that imports the code anew.

        The old instances serve until the new ones are ready, so no call fails or waits longer;
        if the new code does not import, the old instances go on serving. `strict` (--reload,
        for the development loop): the old instances take no new call, so the next call runs
        the new code, or gets its import error, after waiting for a fresh instance.
        """
        stale = [i for i in self._instances.values() if i.state in _USABLE]
        self._log.info(f"{reason}: replacing {len(stale)} instance(s) with fresh ones")
        for instance in stale:
            instance.stale = "code_change" if strict else "reload"  # see _STRICT
        if strict:
            for instance in [i for i in self._idle if i.stale]:
                self._idle.remove(instance)
                self._retire_stale(instance)
            self._boot_failure = None  # the new code deserves a try at once
            self._boot_failures = 0
        self._fill()

    def reconfigure(self, settings: FunctionSettings) -> None:
        """New settings (a reloaded --config): instances started from now on take them, and
        every running one is replaced (strictly, so that the budget is not outgrown)."""
        self._settings = settings
        self._config = settings.config
        self.reload("configuration reloaded", strict=True)

    def drain(self) -> None:
        """The function is going away: queued calls still run, idle instances retire now and
        busy ones after their call; the host forgets the pool once it has none left."""
        self._config = dataclasses.replace(self._config, spares=0)
        self._settings = FunctionSettings(self.name, self._config, elastic=True)
        for instance in list(self._instances.values()):
            if instance.state in _USABLE:
                instance.stale = "removed"
        for instance in [i for i in self._idle if i.stale]:
            self._idle.remove(instance)
            self._retire_stale(instance)
        self._fill()

    @property
    def is_drained(self) -> bool:
        return not self._instances and not self._waiting

    def evictable(self) -> list[tuple[float, Instance]]:
        """(idle since, instance) of idle instances the host may retire for another function's
        call: beyond min_instances, and only from an elastic pool."""
        if not self._settings.elastic:
            return []
        spare = sum(1 for i in self._instances.values() if i.state in _USABLE) \
            - self._settings.min_instances
        idle = sorted(((i.idle_since, i) for i in self._idle if not i.stale),
                      key=lambda pair: pair[0])  # instances themselves do not compare
        return idle[:max(0, spare)]

    def evict(self, instance: Instance) -> None:
        """Retire an idle instance to make room for another function's."""
        if instance in self._idle:
            self._idle.remove(instance)
            self._log.info(f"instance {instance.id} retired to make room for another function",
                           instance.id)
            instance.retire("evicted")
            self.restarts["evicted"] += 1

    def retire_idle(self) -> None:
        """Retire instances idle longer than idle_timeout, down to min_instances."""
        if not self._settings.elastic or self._stopping:
            return
        cutoff = self._loop.time() - self._settings.idle_timeout_s
        usable = sum(1 for i in self._instances.values() if i.state in _USABLE)
        for instance in sorted(self._idle, key=lambda i: i.idle_since):
            if usable <= self._settings.min_instances or instance.idle_since > cutoff:
                break
            self._idle.remove(instance)
            instance.retire("idle")
            self.restarts["idle"] += 1
            usable -= 1

    def retiring_count(self) -> int:
        """Instances on their way out: their share of the budget is free once reaped."""
        return sum(1 for i in self._instances.values() if i.state is State.RETIRING)

    def budget_freed(self) -> None:
        """The host has room again: start what the pool still wants."""
        self._fill()

    def live_pids(self, children: ChildrenMap) -> set[int]:
        """Every process of the pool's instances that are not reaped yet."""
        return {pid for i in self._instances.values() if i.state is not State.DEAD
                for pid in i.memory.pids(children)}

    def worker_pids(self) -> set[int]:
        """The worker processes of the pool's instances that are not reaped yet."""
        return {i.pid for i in self._instances.values() if i.state is not State.DEAD}

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    def describe(self) -> str:
        """One line on the pool's state, for an operator's signal."""
        states = collections.Counter(i.state.value for i in self._instances.values())
        listed = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        return (f"instances: {listed or 'none'}; {self._busy} call(s) running, "
                f"{len(self._waiting)} waiting ({self._waiting_bytes / MB:.1f} MB held)")

    def abort_calls(self) -> None:
        """Stopping: answer waiting calls with SHUTDOWN and retire every instance."""
        self._stopping = True
        for timer in (self._retry_timer, self._watchdog_timer, self._queue_timer):
            if timer is not None:
                timer.cancel()
        self._deadlines.close()
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

    # -- hooks called by instances -------------------------------------------------------------

    def instance_started(self, instance: Instance) -> None:
        self._starts_failing_since = None

    def instance_ready(self, instance: Instance) -> None:
        self._boot_failure = None
        self._boot_failures = 0
        self._announce_if_all_ready()
        for stale in [i for i in self._idle if i.stale]:
            if self._surplus() > 0:
                self._idle.remove(stale)
                self._retire_stale(stale)
        self._fill()
        self.instance_idle(instance)

    def call_finished(self, instance: Instance) -> None:
        self._busy -= 1

    def instance_idle(self, instance: Instance) -> None:
        if instance.call_limit is not None and instance.calls_served >= instance.call_limit \
                and not instance.stale and not self._replacing():
            self._log.info(f"instance {instance.id} served {instance.calls_served} calls; "
                           "recycling it once its replacement is ready", instance.id)
            self.replace(instance, "recycle")
        instance.idle_since = self._loop.time()
        if instance.stale and (instance.stale in _STRICT or self._surplus() > 0):
            self._retire_stale(instance)
            return
        self._idle.append(instance)
        self._pump()
        if instance.state is State.IDLE and self._settings.elastic:
            self._host.instance_idle(self)

    def replace(self, instance: Instance, reason: str) -> None:
        """Mark the instance stale: it serves until a fresh one is ready, then retires."""
        instance.stale = reason
        self._fill()

    def instance_lost(self, instance: Instance, boot_failure: Outcome | None) -> None:
        self.restarts[instance.end_reason or "unknown"] += 1
        if instance in self._idle:
            self._idle.remove(instance)
        if instance.end_reason == "spawn_failure" and self._starts_failing_since is None:
            self._starts_failing_since = self._loop.time()
        if boot_failure is not None:
            self._boot_failed(instance, boot_failure)
        self._fill()
        self._pump()

    def instance_reaped(self, instance: Instance) -> None:
        self._instances.pop(instance.id, None)
        if not self._instances:
            self._all_reaped.set()
        self._host.instance_reaped(self)

    # -- dispatch --------------------------------------------------------------------------------

    def _dispatch(self, instance: Instance, call: Call) -> None:
        self._busy += 1
        instance.dispatch(call)
        self._watch_memory()

    def _pump(self) -> None:
        """Start waiting calls while there are idle instances and room to run them."""
        while self._waiting and self._idle and self._busy < self._config.instances:
            call = self._waiting.popleft()
            self._waiting_bytes -= call.held_bytes
            self._dispatch(self._idle.pop(), call)

    def _arm_queue_timer(self) -> None:
        """One timer for the oldest waiting call that can expire: the queue is FIFO and every
        call waits at most the same timeout, so no younger call can expire first."""
        self._queue_timer = None
        oldest = next((c.queued_at for c in self._waiting if not c.background), None)
        if oldest is not None:
            wait_s = oldest + self._config.timeout_s - time.perf_counter()
            self._queue_timer = self._loop.call_later(max(0.0, wait_s), self._expire_waiting)

    def _expire_waiting(self) -> None:
        expired_before = time.perf_counter() - self._config.timeout_s
        kept: list[Call] = []
        while self._waiting and (self._waiting[0].queued_at or 0.0) <= expired_before:
            call = self._waiting.popleft()
            if call.background:
                kept.append(call)
                continue
            self._waiting_bytes -= call.held_bytes
            detail = (f"no instance became free within the {self._config.timeout_s:g} s timeout"
                      f" ({self._busy} calls running, {len(self._waiting)} waiting)")
            call.resolve(Outcome(Ending.REJECTED, detail=detail))
        self._waiting.extendleft(reversed(kept))
        self._arm_queue_timer()

    def _fail_waiting(self, outcome: Outcome) -> None:
        while self._waiting:
            self._waiting.popleft().resolve(outcome)
        self._waiting_bytes = 0

    # -- upkeep ----------------------------------------------------------------------------------

    def _fill(self) -> None:
        """Spawn instances up to instances + spares (one at a time while boots fail; the spares
        once the others are ready, see Booting)."""
        if self._stopping:
            return
        usable = [i for i in self._instances.values() if i.state in _USABLE]
        fresh = [i for i in usable if not i.stale]
        wanted = self._size()
        if not self._spares_due:
            ready = sum(1 for i in fresh if i.state is not State.STARTING)
            self._spares_due = ready >= wanted - self._config.spares
            if not self._spares_due:
                wanted -= self._config.spares
        missing = wanted - len(fresh)
        if self._boot_failure is not None:
            if self._retry_timer is not None or any(i.state is State.STARTING for i in usable):
                return
            missing = min(missing, 1)
        for _ in range(missing):
            if not self._host.grant(self):
                return  # no room on the host now: budget_freed() comes back
            self._spawn()

    def _spawn(self) -> None:
        ident = self._host.next_instance_id()
        instance = Instance(ident, self._config, self._sandbox, self._memory, self._log,
                            self, _call_limit(self._config.max_calls), self._settings.python)
        self._instances[ident] = instance
        self._all_reaped.clear()
        instance.spawn()
        self._watch_memory()

    def _size(self) -> int:
        """How many initialized instances the pool wants: fixed, the concurrency plus the
        spares; elastic, one per call running or waiting (up to the concurrency, at least
        min_instances) plus the spares."""
        config = self._config
        if not self._settings.elastic:
            return config.instances + config.spares
        demand = min(config.instances, self._busy + len(self._waiting))
        return max(self._settings.min_instances, demand) + config.spares

    def _surplus(self) -> int:
        """Initialized instances beyond the pool's size: as many stale ones may retire."""
        ready = sum(1 for i in self._instances.values() if i.state in (State.IDLE, State.BUSY))
        return ready - self._size()

    def _replacing(self) -> bool:
        return any(i.stale for i in self._instances.values() if i.state in _USABLE)

    def _retire_stale(self, instance: Instance) -> None:
        reason = instance.stale or "recycle"
        instance.retire(reason)
        self.restarts[reason] += 1

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

    def _announce_if_all_ready(self) -> None:
        if self._announced_ready:
            return
        ready = sum(1 for i in self._instances.values() if i.state in (State.IDLE, State.BUSY))
        if ready >= self._size():
            self._announced_ready = True
            elapsed_ms = (self._loop.time() - self._started_at) * 1000
            where = f" of {self.name}" if self._settings.elastic else ""
            self._log.info(f"all {ready} instances{where} ready in {elapsed_ms:.0f} ms")


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
