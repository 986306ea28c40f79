"""supervisor.heap: free memory pinned inside the heap goes back to the system while serving."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(30)

# In a fresh interpreter: 64 MB of 4 KB blocks (below the mmap threshold, so from the heap),
# all freed but the last, which pins the heap's top so that free() alone returns nothing; then
# the supervisor's Trimmer runs on a loop for a few of its periods.
FRAGMENT_THEN_TRIM = textwrap.dedent("""
    import asyncio
    from supervisor import heap

    def rss_mb():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20

    heap.fix_thresholds()
    blocks = [bytes(4000) for _ in range(16384)]
    top = bytes(4000)
    del blocks
    before = rss_mb()

    async def serve_a_while():
        heap.TRIM_EVERY_S = 0.05
        trimmer = heap.Trimmer(asyncio.get_running_loop())
        trimmer.start()
        await asyncio.sleep(0.3)
        trimmer.stop()

    asyncio.run(serve_a_while())
    print(before, rss_mb())
""")


def test_the_trimmer_returns_freed_heap_memory_pinned_below_a_live_block() -> None:
    result = subprocess.run([sys.executable, "-c", FRAGMENT_THEN_TRIM], capture_output=True,
                            text=True, timeout=20, check=True)
    before_mb, after_mb = map(float, result.stdout.split())
    assert before_mb - after_mb > 48, \
        f"RSS {before_mb:.1f} MB before trimming, {after_mb:.1f} after"


# In a fresh interpreter: a megabyte body made and freed over and over, as the supervisor does
# for every call of the `payload` benchmark; the page faults of the last 50 rounds are printed.
BODY_AFTER_BODY = textwrap.dedent("""
    import resource
    from supervisor import heap

    heap.fix_thresholds()
    body = b"x" * 2**20
    del body
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        body = b"x" * 2**20
        del body
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def test_a_freed_body_stays_in_the_heap_for_the_next_one() -> None:
    """free() must not give the heap's top back after every body: 256 page faults a megabyte
    to take it again (measured without the trim threshold: ~11,000 faults in these 50 rounds)."""
    result = subprocess.run([sys.executable, "-c", BODY_AFTER_BODY], capture_output=True,
                            text=True, timeout=20, check=True)
    assert int(result.stdout) < 50, f"{result.stdout.strip()} page faults in 50 rounds"
