"""The host: many functions' pools within one machine's budget, as the platform schedules them.

A call for a function with no idle instance starts one, if the function is under its own
max_instances and the host under its budgets (instances, and the sum of their memory limits).
At the host's budget, the least recently used idle instance of another function (above that
function's min_instances) is retired to make room; otherwise the call waits in its function's
queue, and functions waiting for room get it in the order they asked. Instances idle longer
than their function's idle_timeout retire down to its min_instances. This is OpenWhisk's
invoker order: warm instance, start within the budget, evict LRU idle, queue in arrival order.

    Pool --wants an instance--> Host.grant(pool): room? yes: counted, spawn
                                                  no:  evict an LRU idle instance of another
                                                       pool (room comes when it is reaped),
                                                       and remember the pool as waiting
    Pool --instance reaped--> Host.release(pool): room for the first waiting pool
    every IDLE_SWEEP_S: each pool retires instances idle past its idle_timeout
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervisor.pool import Pool

IDLE_SWEEP_S = 1.0


class Host:
    """The budget every pool's spawns are granted from, and the eviction and idle policies."""

    def __init__(self, max_instances: int, max_memory_mb: int) -> None:
        self.max_instances = max_instances
        self.max_memory_mb = max_memory_mb
        self.pools: dict[str, Pool] = {}
        self._instances = 0
        self._memory_mb = 0
        self._waiting: deque[Pool] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self.cold_starts = 0

    @property
    def instances(self) -> int:
        """Instances counted against the budget: started and not yet reaped."""
        return self._instances

    @property
    def memory_mb(self) -> int:
        return self._memory_mb

    def start(self) -> None:
        """Start the pools and the idle sweep."""
        for pool in self.pools.values():
            pool.start()
        self._arm_sweep()

    def stop(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def grant(self, pool: Pool) -> bool:
        """May `pool` start one more instance? If not, room is being made or it waits."""
        memory_mb = pool.memory_mb
        if self._fits(memory_mb):
            self._instances += 1
            self._memory_mb += memory_mb
            return True
        self._evict_for(pool)
        if pool not in self._waiting:
            self._waiting.append(pool)
        return False

    def release(self, pool: Pool) -> None:
        """An instance of `pool` has been reaped: its share of the budget is free again."""
        self._instances -= 1
        self._memory_mb -= pool.memory_mb
        while self._waiting and self._fits(self._waiting[0].memory_mb):
            self._waiting.popleft().budget_freed()

    def forget(self, pool: Pool) -> None:
        """A pool is gone (its function was removed): it waits for nothing any more."""
        if pool in self._waiting:
            self._waiting.remove(pool)

    def _fits(self, memory_mb: int) -> bool:
        return (self._instances < self.max_instances
                and self._memory_mb + memory_mb <= self.max_memory_mb)

    def _evict_for(self, pool: Pool) -> None:
        """Retire least recently used idle instances of other pools until `pool` would fit
        (the room comes when they are reaped); none at all if that cannot be enough."""
        candidates = sorted(
            ((idle_since, other, instance) for other in self.pools.values() if other is not pool
             for idle_since, instance in other.evictable()),
            key=lambda candidate: candidate[0])
        # Instances already on their way out free their room soon: count it as free.
        leaving = [(other, other.retiring_count()) for other in self.pools.values()]
        instances = self._instances - sum(count for _, count in leaving)
        memory_mb = self._memory_mb - sum(other.memory_mb * count for other, count in leaving)
        chosen = []
        for _, other, instance in candidates:
            if instances < self.max_instances and memory_mb + pool.memory_mb \
                    <= self.max_memory_mb:
                break
            chosen.append((other, instance))
            instances -= 1
            memory_mb -= other.memory_mb
        if instances < self.max_instances and memory_mb + pool.memory_mb <= self.max_memory_mb:
            for other, instance in chosen:
                other.evict(instance)

    def _arm_sweep(self) -> None:
        self._sweep = asyncio.get_running_loop().call_later(IDLE_SWEEP_S, self._sweep_idle)

    def _sweep_idle(self) -> None:
        for pool in self.pools.values():
            pool.retire_idle()
        self._arm_sweep()
