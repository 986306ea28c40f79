"""The host: the pools of every served function, within one machine's budget.

Single-function mode is a host with one fixed pool and no budget to speak of. With --config a
host holds one elastic pool per function and schedules their instances as the platform does:
a call for a function with no idle instance starts one if the function is under its own
max_instances and the host under its budgets (instances, and the sum of their memory limits);
at the host's budget, the least recently used idle instances of other functions (above their
min_instances) are retired to make room; otherwise the call waits in its function's queue, and
functions waiting for room get it in the order they asked. Instances idle longer than their
function's idle_timeout retire down to its min_instances. This is OpenWhisk's invoker order:
warm instance, start within the budget, evict least recently used idle, queue in arrival order.

With one rule against thrashing: an idle instance is evicted only once it has been ready for as
long as it took to start. Evicted as soon as it went idle, an instance of a function called
every few milliseconds was started again for its next call, and with more demand than budget
almost every call paid a cold start (436 starts per 1,000 calls in `python -m benchmarks
hosting`). With the rule, every start buys at least as much serving time as it cost, and a
call waiting for room waits at most about one start time longer.

    Pool --wants an instance--> Host.grant(pool): room? yes: counted, the pool spawns
                                                  no:  evict LRU idle instances of other
                                                       pools (room comes when they are reaped)
                                                       and remember the pool as waiting
    when no idle instance has served its start cost yet: eviction is tried again when one has
    Pool --instance reaped--> Host.instance_reaped(pool): room for the first waiting pool;
                                                          orphans of the dead looked for
    every IDLE_SWEEP_S: pools retire instances idle past their idle_timeout
    every ZOMBIE_SWEEP_S: exited children that are no instance's are reaped

The host also owns what concerns every pool's processes at once: orphans (a process of any
instance is kept, anything else under the supervisor is killed) and zombies.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from supervisor import logs
from supervisor.config import FunctionSettings
from supervisor.limits import MemoryEnforcement, OrphanReaper, children_map
from supervisor.pool import Pool

IDLE_SWEEP_S = 1.0
# Orphans of dead instances are looked for at most this often (a look scans /proc).
ORPHAN_SWEEP_DELAY_S = 0.05
# Exited children that are no instance's (daemons a function detached) are reaped this often.
ZOMBIE_SWEEP_S = 1.0
UNLIMITED = 1 << 62


class Host:
    """The pools, the budget their spawns are granted from, eviction, idle and orphan upkeep.

    `helpers` are the pids of the supervisor's own helper processes (the guard): children of
    ours that are never taken for orphans.
    """

    def __init__(self, memory: MemoryEnforcement, helpers: frozenset[int],
                 max_instances: int = UNLIMITED, max_memory_mb: int = UNLIMITED) -> None:
        self.max_instances = max_instances
        self.max_memory_mb = max_memory_mb
        self.pools: dict[str, Pool] = {}
        self._memory = memory
        self._loop = asyncio.get_running_loop()
        self._reaper = OrphanReaper(self._loop, set(helpers))
        self._instances = 0
        self._memory_mb = 0
        self._waiting: deque[Pool] = deque()
        self._leaving: list[Pool] = []  # removed functions whose last instances still run
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._evict_again_at = 0.0  # when the "evict" timer fires, if it is set
        self._last_instance_id = 0

    def next_instance_id(self) -> int:
        """Instance ids are the host's, not a pool's: they name cgroups and log lines."""
        self._last_instance_id += 1
        return self._last_instance_id

    @property
    def instances(self) -> int:
        """Instances counted against the budget: started and not yet reaped."""
        return self._instances

    @property
    def memory_mb(self) -> int:
        return self._memory_mb

    def every_pool(self) -> Iterable[Pool]:
        """The pools serving, then those of removed functions still finishing."""
        return [*self.pools.values(), *self._leaving]

    def start(self) -> None:
        """Start the pools and the periodic upkeep."""
        for pool in self.pools.values():
            pool.start()
        self._every(IDLE_SWEEP_S, "idle", self._retire_idle)
        self._every(ZOMBIE_SWEEP_S, "zombies", self._reap_zombies)

    def add(self, pool: Pool) -> None:
        """Serve a new function (at start, or added by a reload)."""
        self.pools[pool.name] = pool

    def remove(self, name: str) -> None:
        """Stop routing to a function; its pool drains and goes."""
        pool = self.pools.pop(name)
        self._leaving.append(pool)
        if pool in self._waiting:
            self._waiting.remove(pool)
        pool.drain()
        self._forget_drained()

    def reconcile(self, functions: list[FunctionSettings],
                  make_pool: Callable[[FunctionSettings], Pool], log: logs.Log) -> None:
        """Serve these functions from now on (a reloaded --config): new ones start, removed
        ones drain and go, and the others roll onto fresh instances with their new code and
        settings, calls queueing meanwhile rather than failing."""
        wanted = {settings.name: settings for settings in functions}
        for name in [name for name in self.pools if name not in wanted]:
            log.info(f"function {name} removed: draining it")
            self.remove(name)
        for name, settings in wanted.items():
            pool = self.pools.get(name)
            if pool is None:
                log.info(f"function {name} added")
                pool = make_pool(settings)
                self.add(pool)
                pool.start()
            else:
                pool.reconfigure(settings)

    async def stop(self, timeout_s: float) -> None:
        """Stop every pool, then kill whatever of theirs is left."""
        for timer in self._timers.values():
            timer.cancel()
        await asyncio.gather(*(pool.stop(timeout_s) for pool in self.every_pool()))
        self._reaper.sweep(children_map(), keep=set())

    def grant(self, pool: Pool) -> bool:
        """May `pool` start one more instance? If not, room is being made or it waits."""
        if self._fits(pool.memory_mb):
            self._instances += 1
            self._memory_mb += pool.memory_mb
            return True
        self._evict_for(pool)
        if pool not in self._waiting:
            self._waiting.append(pool)
        return False

    def instance_idle(self, pool: Pool) -> None:
        """An instance of `pool` went idle: if another function waits for room, it is evicted
        for it (the room comes when it is reaped)."""
        waiting = next((other for other in self._waiting if other is not pool), None)
        if waiting is not None:
            self._evict_for(waiting)

    def instance_reaped(self, pool: Pool) -> None:
        """An instance of `pool` is gone: its share of the budget is free again."""
        self._instances -= 1
        self._memory_mb -= pool.memory_mb
        while self._waiting and self._fits(self._waiting[0].memory_mb):
            self._waiting.popleft().budget_freed()
        self._forget_drained()
        if "orphans" not in self._timers:
            self._timers["orphans"] = self._loop.call_later(ORPHAN_SWEEP_DELAY_S,
                                                            self._sweep_orphans)

    def _fits(self, memory_mb: int) -> bool:
        return (self._instances < self.max_instances
                and self._memory_mb + memory_mb <= self.max_memory_mb)

    def _evict_for(self, pool: Pool) -> None:
        """Retire least recently used idle instances of other pools until `pool` would fit
        (the room comes when they are reaped); none, if that cannot be enough. An instance is
        taken only once it has been ready for its start cost; if that is all that stands in
        the way, eviction is tried again when it will have been."""
        # Instances already on their way out free their room soon: count it as free.
        leaving = [(other, other.retiring_count()) for other in self.every_pool()]
        instances = self._instances - sum(count for _, count in leaving)
        memory_mb = self._memory_mb - sum(other.memory_mb * count for other, count in leaving)
        if instances < self.max_instances and memory_mb + pool.memory_mb <= self.max_memory_mb:
            return  # room is on its way already
        candidates = sorted(
            ((idle_since, other.name, other, instance) for other in self.pools.values()
             if other is not pool for idle_since, instance in other.evictable()),
            key=lambda candidate: candidate[:2])
        now = self._loop.time()
        chosen = []
        retry_in_s = float("inf")
        for _, _, other, instance in candidates:
            unripe_s = instance.ready_at + instance.start_cost_s - now
            if unripe_s > 0:
                retry_in_s = min(retry_in_s, unripe_s)
                continue
            chosen.append((other, instance))
            instances -= 1
            memory_mb -= other.memory_mb
            if instances < self.max_instances and \
                    memory_mb + pool.memory_mb <= self.max_memory_mb:
                for evicted_from, evicted in chosen:
                    evicted_from.evict(evicted)
                return
        if retry_in_s < float("inf"):
            self._evict_again_in(retry_in_s)

    def _evict_again_in(self, delay_s: float) -> None:
        when = self._loop.time() + delay_s
        if "evict" in self._timers:
            if self._evict_again_at <= when:
                return
            self._timers["evict"].cancel()
        self._evict_again_at = when
        self._timers["evict"] = self._loop.call_later(delay_s, self._evict_for_first_waiting)

    def _evict_for_first_waiting(self) -> None:
        del self._timers["evict"]
        if self._waiting:
            self._evict_for(self._waiting[0])

    def _forget_drained(self) -> None:
        self._leaving = [pool for pool in self._leaving if not pool.is_drained]

    def _every(self, interval_s: float, name: str, action: Callable[[], None]) -> None:
        def tick() -> None:
            action()
            self._timers[name] = self._loop.call_later(interval_s, tick)

        self._timers[name] = self._loop.call_later(interval_s, tick)

    def _retire_idle(self) -> None:
        for pool in self.pools.values():
            pool.retire_idle()

    def _reap_zombies(self) -> None:
        keep = {i.pid for pool in self.every_pool() for i in pool.instances()}
        self._reaper.reap_exited(keep)

    def _sweep_orphans(self) -> None:
        del self._timers["orphans"]
        self._memory.remove_released()
        workers = {pid for pool in self.every_pool() for pid in pool.worker_pids()}
        if not self._reaper.has_strays(workers):
            return
        children = children_map()
        if not children:
            return  # /proc could not be read (out of descriptors?): the next reap sweeps
        keep = {pid for pool in self.every_pool() for pid in pool.live_pids(children)}
        self._reaper.sweep(children, keep)
