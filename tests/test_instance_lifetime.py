"""A dead instance is freed as soon as it is reaped, not by an occasional cycle collection.

Each instance the pool replaces must go with everything it held (its pipes' buffers, its decoder,
the tail of its output): under a steady trickle of crashes, instances left for the cycle
collector pile up until a rare full collection, and the supervisor's RSS climbs in a saw-tooth.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

FUNCTIONS = Path(__file__).parent / "functions"

# In a fresh interpreter (the host becomes a subreaper and makes cgroups): a pool of one crashes
# its instance a few times with the cycle collector off, and counts the replaced instances that
# are still alive afterwards. They are looked for among the objects the collector tracks, not
# through weak references: an Instance compiled by mypyc (setup.py) takes none.
CRASH_WITHOUT_THE_CYCLE_COLLECTOR = textwrap.dedent("""
    import asyncio, gc, json, sys, time
    from supervisor import cli, logs, sandbox
    from supervisor.calls import Call, Ending
    from supervisor.config import FunctionSettings
    from supervisor.instance import Instance, State
    from supervisor.runner import running_host
    from worker import protocol

    CRASHES = 4
    SETTLE_S = 2.0

    def still_alive(instance_ids):
        return sum(type(o) is Instance and o.id in instance_ids for o in gc.get_objects())

    async def crash_repeatedly(functions):
        config = cli.parse_config(["--instances", "1", "--spares", "0", "--sandbox", "none",
                                   "--dir", functions, "hostile.handler"])
        log = logs.Log("text", "error", "hostile")
        settings = FunctionSettings(config.function_name, config)
        replaced = []
        async with running_host(config, [settings], sandbox.choose(config), log, ()) as (host, _):
            host.start()
            pool = host.pools[settings.name]
            event = json.dumps({"queryStringParameters": {"do": "os_exit"}}).encode()
            for n in range(CRASHES):
                settled = asyncio.get_running_loop().create_future()

                def on_done(call, outcome):
                    # Called while the instance that ran the call is still the pool's.
                    served = [i for i in pool.instances() if i.id == call.instance_id]
                    settled.set_result((outcome, served))

                pool.submit(Call(f"crash-{n}", [protocol.LAMBDA_EVENT, None], event,
                                 time.perf_counter(), on_done))
                outcome, served = await settled
                assert outcome.ending is Ending.CRASH and len(served) == 1, (outcome, served)
                while served[0].state is not State.DEAD:
                    await asyncio.sleep(0.01)
                replaced.append(served.pop().id)
            # Loop callbacks (a grace timer, a sweep) may hold one for a moment.
            deadline = time.monotonic() + SETTLE_S
            while (alive := still_alive(replaced)) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        print(json.dumps({"replaced": len(replaced), "alive": alive}))

    gc.disable()
    asyncio.run(crash_repeatedly(sys.argv[1]))
""")


def test_a_replaced_instance_is_freed_without_the_cycle_collector() -> None:
    result = subprocess.run([sys.executable, "-c", CRASH_WITHOUT_THE_CYCLE_COLLECTOR,
                             str(FUNCTIONS)], capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.splitlines()[-1])
    assert counts["replaced"] >= 4
    assert counts["alive"] == 0, counts
