"""End to end: the development loop. --reload picks up saved code with no failed call;
`sfsupervisor invoke` runs one call through a real worker and prints its result."""

from __future__ import annotations

import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_helpers import FUNCTIONS_DIR, PYTHON_M_SUPERVISOR, Launch, Supervisor, ok_json

pytestmark = pytest.mark.timeout(60)

VERSIONED = """\
import json, time
VERSION = {version!r}
def handler(event, context):
    time.sleep(float(event["queryStringParameters"].get("seconds", 0)))
    return {{"statusCode": 200, "body": json.dumps({{"version": VERSION}})}}
"""
BROKEN = "import this_module_does_not_exist\n"


def write_code(code_root: Path, text: str) -> None:
    (code_root / "index.py").write_text(text)


def version(supervisor: Supervisor, **params: float) -> str:
    return ok_json(supervisor.request("GET", "/", params=params))["version"]


@pytest.fixture
def code_root(tmp_path: Path) -> Path:
    root = tmp_path / "function"
    root.mkdir()
    write_code(root, VERSIONED.format(version="one"))
    return root


def test_the_next_call_after_a_save_runs_the_new_code(
    launch_supervisor: Launch, code_root: Path
) -> None:
    supervisor = launch_supervisor("index.handler", "--instances", "2", "--reload",
                                   code_root=code_root)
    assert version(supervisor) == "one"
    write_code(code_root, VERSIONED.format(version="two"))
    supervisor.wait_for_text("code changed (index.py)")
    assert version(supervisor) == "two"
    assert {version(supervisor) for _ in range(6)} == {"two"}


def test_a_save_under_load_fails_no_call(launch_supervisor: Launch, code_root: Path) -> None:
    supervisor = launch_supervisor("index.handler", "--instances", "2", "--reload",
                                   code_root=code_root)
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            response = supervisor.request("GET", "/", params={"seconds": 0.01})
            statuses.append(response.status_code)

    with ThreadPoolExecutor(4) as pool:
        loaders = [pool.submit(load) for _ in range(4)]
        supervisor.wait_until(lambda: len(statuses) > 20, "steady load")
        write_code(code_root, VERSIONED.format(version="two"))
        supervisor.wait_until(lambda: version(supervisor) == "two", "the new code serving")
        stop.set()
        for loader in loaders:
            loader.result()
    assert set(statuses) == {200}, sorted(set(statuses))


def test_a_broken_save_shows_its_error_and_a_fix_recovers(
    launch_supervisor: Launch, code_root: Path
) -> None:
    supervisor = launch_supervisor("index.handler", "--instances", "1", "--reload",
                                   code_root=code_root)
    write_code(code_root, BROKEN)
    supervisor.wait_until(
        lambda: supervisor.request("GET", "/").json().get("errorType") == "ModuleNotFoundError",
        "the import error answered")
    write_code(code_root, VERSIONED.format(version="fixed"))
    supervisor.wait_until(lambda: supervisor.request("GET", "/").status_code == 200,
                          "the fixed code serving")
    assert version(supervisor) == "fixed"


# -- sfsupervisor invoke ------------------------------------------------------------------------


def invoke(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYTHON_M_SUPERVISOR, "invoke", "lambda_style.handler",
                           "--dir", str(FUNCTIONS_DIR), *arguments], input=stdin,
                          capture_output=True, text=True, timeout=30, check=False)


def test_invoke_prints_the_result_and_logs_the_call_to_stderr() -> None:
    done = invoke("--data", '{"action": "echo", "n": [1, 2]}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["event"] == {"action": "echo", "n": [1, 2]}
    assert "START RequestID:" in done.stderr and "REPORT RequestID:" in done.stderr


def test_invoke_reads_the_event_from_a_file_or_stdin(tmp_path: Path) -> None:
    event_file = tmp_path / "event.json"
    event_file.write_text('{"action": "echo", "from": "file"}')
    from_file = invoke("--file", str(event_file))
    assert json.loads(from_file.stdout)["event"]["from"] == "file"
    from_stdin = invoke("--file", "-", stdin='{"action": "echo", "from": "stdin"}')
    assert json.loads(from_stdin.stdout)["event"]["from"] == "stdin"
    assert json.loads(invoke().stdout)["event"] == {}


def test_invoke_raw_prints_a_string_result_as_text() -> None:
    done = invoke("--data", '{"action": "print"}', "--raw")
    assert done.stdout == "printed\n"
    assert "line 0" in done.stderr


@pytest.mark.parametrize(("event", "options", "error_type"), [
    ({"action": "raise"}, (), "ValueError"),
    ({"action": "sleep", "seconds": 3}, ("--timeout", "1"), "Sandbox.Timedout"),
    ({"action": "exit"}, (), "Runtime.ExitError"),
])
def test_invoke_exits_1_with_the_error_when_the_call_fails(
    event: dict, options: tuple[str, ...], error_type: str
) -> None:
    done = invoke("--data", json.dumps(event), *options)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["errorType"] == error_type


def test_invoke_of_code_that_does_not_import_exits_1() -> None:
    done = subprocess.run([*PYTHON_M_SUPERVISOR, "invoke", "import_missing.handler", "--dir",
                           str(FUNCTIONS_DIR)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 1
    assert json.loads(done.stdout)["errorType"] == "ModuleNotFoundError"


def test_invoke_with_an_event_that_is_not_json_exits_2_saying_so() -> None:
    done = invoke("--data", "{nope")
    assert done.returncode == 2
    assert done.stderr.startswith("sfsupervisor invoke: error: --data: the event is not JSON")
    assert done.stdout == ""
