"""End to end: a function reaches nothing but itself (--sandbox ns and uid).

functions/escape.py tries each escape — kill the supervisor, kill(-1), read the supervisor's
environment and memory, read another instance's environment and /tmp, write into the code root,
fork without end — while well-behaved calls keep running on the other instance; each attempt
must fail and every other call succeed. Also: the function's environment is only what it is
given, /tmp is private (capped and emptied with the instance under ns), a non-root supervisor
seals instances in user namespaces, and a tier that cannot work is refused or, under auto,
replaced by `none` with a warning.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from e2e_helpers import (
    FUNCTIONS_DIR,
    PYTHON_M_SUPERVISOR,
    Launch,
    Supervisor,
    ok_json,
    sandbox_unavailable,
)

pytestmark = pytest.mark.timeout(60)

TIERS = ("ns", "uid")
SECRET_NAME, SECRET = "SFS_TEST_SECRET", "the-host-s-secret"
PASSED_NAME = "SFS_TEST_PASSED"
MAX_PIDS = 64
TMP_MB = 16
READY_LINE = re.compile(r"instance (\d+) ready \(pid (\d+)")
UNPRIVILEGED = 65534
GOOD_CALLS = 5  # at least this many well-behaved calls run beside each escape
DENIED = {"EPERM", "EACCES", "ENOENT", "ESRCH", "EROFS"}


def require_tier(tier: str) -> None:
    """Skip when the machine cannot give this tier, except in CI, where it must."""
    if reason := sandbox_unavailable(tier):
        if os.environ.get("CI"):
            pytest.fail(f"--sandbox {tier} must work in CI: {reason}")
        pytest.skip(f"--sandbox {tier} is not available here: {reason}")


@pytest.fixture(scope="module", params=TIERS)
def sandboxed(request: pytest.FixtureRequest, launch_module_supervisor: Launch) -> Supervisor:
    """escape.handler on 2 instances under the tier, with a secret in its own environment."""
    require_tier(request.param)
    supervisor = launch_module_supervisor(
        "escape.handler", "--sandbox", request.param, "--instances", "2", "--spares", "0",
        "--max-pids", str(MAX_PIDS), "--tmp-mb", str(TMP_MB), "--pass-env", PASSED_NAME,
        extra_env={SECRET_NAME: SECRET, PASSED_NAME: "passed on purpose"})
    assert f"sandbox {request.param}" in supervisor.log_text()
    return supervisor


def attempt(supervisor: Supervisor, do: str, **params: Any) -> dict[str, Any]:
    return ok_json(supervisor.request("GET", "/", params={"do": do, **params}))


def ready_pids(supervisor: Supervisor) -> dict[int, int]:
    """Instance -> the host pid of the process the supervisor started for it."""
    return {int(i): int(p) for i, p in READY_LINE.findall(supervisor.log_text())}


def live_ready_pids(supervisor: Supervisor) -> list[int]:
    return [pid for pid in ready_pids(supervisor).values() if psutil.pid_exists(pid)]


@contextlib.contextmanager
def good_calls_running(supervisor: Supervisor) -> Iterator[None]:
    """Well-behaved calls made without pause meanwhile; every one must succeed."""
    statuses: list[int] = []
    stop = threading.Event()

    def call() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{supervisor.port}", timeout=30,
                          trust_env=False) as client:
            while not stop.is_set():
                response = client.get("/", params={"do": "sleep", "seconds": 0.02})
                statuses.append(response.status_code)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        yield
        supervisor.wait_until(lambda: len(statuses) >= GOOD_CALLS, f"{GOOD_CALLS} good calls")
    finally:
        stop.set()
        caller.join()
    assert set(statuses) == {200}, statuses


def assert_denied(result: Any) -> None:
    assert result in DENIED, f"the escape worked or failed oddly: {result!r}"


# -- the escapes -------------------------------------------------------------------------------


def test_a_function_cannot_kill_the_supervisor(sandboxed: Supervisor) -> None:
    with good_calls_running(sandboxed):
        assert_denied(attempt(sandboxed, "kill", pid=sandboxed.pid)["result"])
    assert psutil.pid_exists(sandboxed.pid)


def test_kill_everything_reaches_only_the_instance_itself(sandboxed: Supervisor) -> None:
    others = live_ready_pids(sandboxed)
    with good_calls_running(sandboxed):
        result = attempt(sandboxed, "kill_everything", test_uid=os.getuid())["result"]
    assert result in ("ok", "ESRCH"), result
    assert psutil.pid_exists(sandboxed.pid)
    survivors = live_ready_pids(sandboxed)
    assert len(survivors) >= len(others) - 1, "kill(-1) reached another instance"


def test_a_function_cannot_read_the_supervisors_environment_or_memory(
    sandboxed: Supervisor,
) -> None:
    with good_calls_running(sandboxed):
        for part in ("environ", "mem"):
            path = f"/proc/{sandboxed.pid}/{part}"
            assert_denied(attempt(sandboxed, "read", path=path)["result"])


def test_the_environment_is_only_what_the_function_is_given(sandboxed: Supervisor) -> None:
    environment = attempt(sandboxed, "environment")["result"]
    assert SECRET_NAME not in environment
    assert environment[PASSED_NAME] == "passed on purpose"
    assert {"PATH", "LANG", "HOME", "TZ", "TMPDIR", "_HANDLER", "LAMBDA_TASK_ROOT"} <= set(
        environment)
    assert SECRET not in repr(environment)


def test_a_function_cannot_reach_another_instance(sandboxed: Supervisor) -> None:
    denied = 0
    with good_calls_running(sandboxed):
        for pid in live_ready_pids(sandboxed):
            for do, params in (("read", {"path": f"/proc/{pid}/environ"}), ("kill", {"pid": pid})):
                answer = attempt(sandboxed, do, **params)
                assert answer["uid"] != 0
                if answer["result"] != "own":
                    assert_denied(answer["result"])
                    denied += 1
    assert denied >= 2, "no attempt reached for another instance"


def test_another_instances_tmp_is_out_of_reach(sandboxed: Supervisor) -> None:
    written = attempt(sandboxed, "write_tmp", name="secret.txt")
    with httpx.Client(base_url=f"http://127.0.0.1:{sandboxed.port}", timeout=30,
                      trust_env=False) as holder:
        hold = threading.Thread(target=holder.get, args=("/",),
                                kwargs={"params": {"do": "sleep", "seconds": 1.0}})
        hold.start()  # the instance that wrote serves next (last idle, first used): hold it
        try:
            sandboxed.wait_until(lambda: _busy_instances(sandboxed) == 1, "one busy instance")
            other = attempt(sandboxed, "read", path=written["result"])
        finally:
            hold.join()
    assert other["id"] != written["id"], "the same instance read its own file"
    assert_denied(other["result"])


def _busy_instances(supervisor: Supervisor) -> int:
    metrics = supervisor.request("GET", "/metrics").text
    match = re.search(r'sfsupervisor_instances\{[^}]*state="busy"[^}]*\} (\S+)', metrics)
    return int(float(match.group(1))) if match else 0


def test_the_code_root_is_read_only(sandboxed: Supervisor) -> None:
    with good_calls_running(sandboxed):
        assert_denied(attempt(sandboxed, "write_code_root")["result"])
    assert not (FUNCTIONS_DIR / "pwned.txt").exists()


def test_a_fork_bomb_fails_inside_its_instance(sandboxed: Supervisor) -> None:
    with good_calls_running(sandboxed):
        bomb = attempt(sandboxed, "fork_bomb", most=10 * MAX_PIDS)["result"]
    assert bomb["error"] == "EAGAIN", bomb
    assert bomb["forked"] < MAX_PIDS
    assert attempt(sandboxed, "sleep")["result"] == "slept"


def test_tmp_is_private_and_gone_with_its_instance(sandboxed: Supervisor) -> None:
    written = attempt(sandboxed, "write_tmp", name="left-behind.txt")
    crash = sandboxed.request("GET", "/", params={"do": "crash"})
    assert crash.status_code == 502
    for _ in range(4):  # every instance now: the crashed one's successor among them
        assert attempt(sandboxed, "read", path=written["result"])["result"] == "ENOENT"


def test_ns_tmp_is_capped(sandboxed: Supervisor) -> None:
    if "sandbox ns" not in sandboxed.log_text():
        pytest.skip("the uid tier's TMPDIR is a directory: only ns gives /tmp a size")
    filled = attempt(sandboxed, "fill_tmp", mb=4 * TMP_MB)["result"]
    assert filled["error"] == "ENOSPC" and filled["mb"] <= TMP_MB, filled


def test_ns_serves_a_code_root_under_tmp_read_only_beside_a_private_tmp(
    launch_supervisor: Launch,
) -> None:
    """A checkout under /tmp (CI's clone): the instance's own /tmp must not hide it."""
    require_tier("ns")
    code_root = Path(tempfile.mkdtemp(prefix="sfsupervisor-code-", dir="/tmp"))
    try:
        code_root.chmod(0o755)
        shutil.copy(FUNCTIONS_DIR / "escape.py", code_root / "escape.py")
        host_file = Path("/tmp") / f"{code_root.name}.host"
        host_file.write_text("the host's")
        supervisor = launch_supervisor("escape.handler", "--sandbox", "ns", "--instances", "1",
                                       "--spares", "0", code_root=code_root)
        assert attempt(supervisor, "sleep")["result"] == "slept"
        assert_denied(attempt(supervisor, "write_code_root")["result"])
        assert attempt(supervisor, "read", path=str(host_file))["result"] == "ENOENT"
        written = attempt(supervisor, "write_tmp", name="own.txt")["result"]
        assert written.startswith("/tmp/") and not Path(written).exists()
    finally:
        shutil.rmtree(code_root)
        Path("/tmp", f"{code_root.name}.host").unlink(missing_ok=True)


# -- choosing a tier ---------------------------------------------------------------------------


def test_a_non_root_supervisor_seals_instances_in_user_namespaces(
    launch_supervisor: Launch,
) -> None:
    command = ("setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}",
               "--clear-groups", "--", *PYTHON_M_SUPERVISOR)
    supervisor = launch_supervisor("escape.handler", "--instances", "1", "--spares", "0",
                                   command=command, extra_env={SECRET_NAME: SECRET})
    if "sandbox ns" not in supervisor.log_text():
        if os.environ.get("CI"):
            pytest.fail(f"user namespaces must work in CI: {supervisor.log_tail()}")
        pytest.skip("unprivileged user namespaces are not allowed here")
    assert "a user namespace" in supervisor.log_text()
    assert_denied(attempt(supervisor, "kill", pid=supervisor.pid)["result"])
    assert_denied(attempt(supervisor, "read", path=f"/proc/{supervisor.pid}/environ")["result"])
    assert SECRET_NAME not in attempt(supervisor, "environment")["result"]
    assert psutil.pid_exists(supervisor.pid)


def test_auto_says_what_is_open_when_no_tier_can_work(
    launch_supervisor: Launch, tmp_path: Path
) -> None:
    private_root = private_code_root(tmp_path)
    supervisor = launch_supervisor("escape.handler", "--instances", "1", "--spares", "0",
                                   code_root=private_root)
    log = supervisor.log_text()
    assert "sandbox none" in log
    assert "WARNING no sandbox" in log and "cannot read" in log and "signal the supervisor" in log
    assert attempt(supervisor, "sleep")["result"] == "slept"


def test_an_asked_tier_that_cannot_work_stops_the_command(tmp_path: Path) -> None:
    private_root = private_code_root(tmp_path)
    done = subprocess.run([*PYTHON_M_SUPERVISOR, "--dir", str(private_root), "--port", "0",
                           "--sandbox", "uid", "escape.handler"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sfsupervisor: error: --sandbox uid:"), lines
    assert "cannot read" in lines[0] and str(private_root) in lines[0]


def private_code_root(tmp_path: Path) -> Path:
    """A code root that only root can read (pytest's tmp_path is 0700)."""
    code_root = tmp_path / "private"
    code_root.mkdir()
    shutil.copy(FUNCTIONS_DIR / "escape.py", code_root / "escape.py")
    return code_root
