"""CPU burned on purpose by the benchmark functions that model an expensive import."""

import time


def burn_cpu(seconds: float) -> None:
    """Spin for `seconds` of this thread's CPU time (not wall time: a process preempted by
    another still burns what it was asked to)."""
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass
