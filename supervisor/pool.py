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
waits behind a slow one while another instance is free.

Booting: a new instance reports READY once the entry point has imported. When instances fail
to boot (the import raises, the process dies, the import outlives the timeout), the pool keeps
the failure as the answer for calls that have no instance to wait for, and tries again with one
instance at a time after an exponential, jittered, capped backoff: a broken function costs a
retry every few seconds, not a core, and fixing the code needs no restart.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque

from supervisor import logs
from supervisor.calls import Call, Ending, Outcome
from supervisor.config import Config
from supervisor.instance import Instance, State

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
_USABLE = (State.STARTING, State.IDLE, State.BUSY)


class Pool:
    """Keeps `config.instances` workers running and hands each call to a free one."""

    def __init__(self, config: Config, log: logs.Log) -> None:
        self._config = config
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._environment = config.worker_environment()
        self._instances: dict[int, Instance] = {}
        self._idle: list[Instance] = []
        self._waiting: deque[Call] = deque()
        self._next_id = 1
        self._boot_failure: Outcome | None = None
        self._boot_failures = 0
        self._retry_timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._announced_ready = False
        self._stopping = False
        self._all_reaped = asyncio.Event()

    def start(self) -> None:
        """Spawn the instances; calls may arrive at once and wait for the first READY."""
        self._started_at = self._loop.time()
        self._fill()

    async def run(self, call: Call) -> Outcome:
        """Run a call on the next free instance and return how it ended."""
        if self._stopping:
            return Outcome(Ending.SHUTDOWN)
        if self._idle:
            self._idle.pop().dispatch(call)
        elif self._boot_failure is not None and not self._has_instance_to_wait_for():
            return self._boot_failure
        else:
            self._waiting.append(call)
        return await call.future

    async def stop(self, timeout_s: float) -> None:
        """Retire every instance and wait (at most timeout_s) until all are reaped."""
        self._stopping = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self._fail_waiting(Outcome(Ending.SHUTDOWN))
        for instance in list(self._instances.values()):
            instance.retire("the supervisor is stopping")
        if self._instances:
            try:
                await asyncio.wait_for(self._all_reaped.wait(), timeout_s)
            except TimeoutError:
                self._log.error(f"{len(self._instances)} instance(s) not reaped in time")

    # -- hooks called by instances -------------------------------------------------------------

    def instance_ready(self, instance: Instance) -> None:
        self._boot_failure = None
        self._boot_failures = 0
        self._announce_if_all_ready()
        self._fill()
        self.instance_idle(instance)

    def instance_idle(self, instance: Instance) -> None:
        while self._waiting:
            call = self._waiting.popleft()
            if not call.future.done():
                instance.dispatch(call)
                return
        self._idle.append(instance)

    def instance_lost(self, instance: Instance, boot_failure: Outcome | None) -> None:
        if instance in self._idle:
            self._idle.remove(instance)
        if boot_failure is not None:
            self._boot_failed(instance, boot_failure)
        self._fill()

    def instance_reaped(self, instance: Instance) -> None:
        self._instances.pop(instance.id, None)
        if not self._instances:
            self._all_reaped.set()

    # -- upkeep ----------------------------------------------------------------------------------

    def _fill(self) -> None:
        """Spawn instances up to the configured count (one at a time while boots fail)."""
        if self._stopping:
            return
        usable = [i for i in self._instances.values() if i.state in _USABLE]
        missing = self._config.instances - len(usable)
        if self._boot_failure is not None:
            if self._retry_timer is not None or any(i.state is State.STARTING for i in usable):
                return
            missing = min(missing, 1)
        for _ in range(missing):
            self._spawn()

    def _spawn(self) -> None:
        instance = Instance(self._next_id, self._config, self._environment, self._log, self)
        self._next_id += 1
        self._instances[instance.id] = instance
        self._all_reaped.clear()
        instance.spawn()

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

    def _fail_waiting(self, outcome: Outcome) -> None:
        while self._waiting:
            self._waiting.popleft().resolve(outcome)

    def _announce_if_all_ready(self) -> None:
        if self._announced_ready:
            return
        ready = sum(1 for i in self._instances.values() if i.state in (State.IDLE, State.BUSY))
        if ready >= self._config.instances:
            self._announced_ready = True
            elapsed_ms = (self._loop.time() - self._started_at) * 1000
            self._log.info(f"all {self._config.instances} instances ready in {elapsed_ms:.0f} ms")


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
