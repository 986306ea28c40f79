"""End to end: the command line: entry point checks, the console script, defaults, signals."""

import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from e2e_helpers import (
    PYTHON_M_SUPERVISOR,
    Launch,
    Supervisor,
    free_port,
    is_alive,
    ok_json,
    tagged_processes,
)

pytestmark = pytest.mark.timeout(30)

BAD_ENTRY_DEADLINE_S = 10


def console_script() -> str:
    """The installed `sfsupervisor` script: beside this interpreter, else on PATH."""
    beside_python = Path(sys.executable).with_name("sfsupervisor")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("sfsupervisor")
    if found is None:
        pytest.fail("the sfsupervisor console script is not installed")
    return found


@pytest.fixture(scope="module")
def script_server(launch_module_supervisor: Launch) -> Supervisor:
    """router.handler run by the console script with no options: port from $PORT."""
    return launch_module_supervisor(
        "router.handler", command=(console_script(),), port_from_env=True
    )


@pytest.fixture
def code_root(tmp_path: Path) -> Path:
    """A code root holding index.py and my.index.py, both with a valid handler."""
    handler = "def handler(event, context):\n    return {'body': 'ok'}\n"
    for name in ("index.py", "my.index.py"):
        (tmp_path / name).write_text(handler)
    return tmp_path


@pytest.mark.parametrize(
    ("command", "entrypoint"),
    [
        (PYTHON_M_SUPERVISOR, "missing_file.handler"),
        (PYTHON_M_SUPERVISOR, "my.index.handler"),
        (PYTHON_M_SUPERVISOR, "index"),
        (PYTHON_M_SUPERVISOR, "index."),
        (None, "missing_file.handler"),
    ],
    ids=["no-such-file", "dotted-file", "no-function", "empty-function", "console-script"],
)
def test_bad_entry_point_exits_2_with_one_error_line(
    code_root: Path, command: tuple[str, ...] | None, entrypoint: str
) -> None:
    argv = [*(command or (console_script(),)), "--dir", str(code_root),
            "--port", str(free_port()), entrypoint]
    finished = subprocess.run(
        argv, capture_output=True, text=True, timeout=BAD_ENTRY_DEADLINE_S, stdin=subprocess.DEVNULL
    )
    assert finished.returncode == 2, finished.stderr
    error_lines = finished.stderr.strip().splitlines()
    assert len(error_lines) == 1, finished.stderr
    assert error_lines[0].startswith("sfsupervisor: error:")


def test_console_script_serves_on_port_from_env(script_server: Supervisor) -> None:
    result = ok_json(script_server.call("echo"))
    assert result["event"]["headers"]["Host"] == f"127.0.0.1:{script_server.port}"


def test_listening_address_is_printed(script_server: Supervisor) -> None:
    assert f"127.0.0.1:{script_server.port}" in script_server.output_text()


def test_default_text_log_has_runtime_lines(script_server: Supervisor) -> None:
    response = script_server.call("identity")
    request_id = response.headers["X-Request-Id"]
    log = script_server.wait_for_text(f"REPORT RequestID: {request_id} ")
    assert f"START RequestID: {request_id} Version: " in log
    assert f"END RequestID: {request_id}" in log


def test_sigint_stops_the_workers_and_exits_0(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor("router.handler", "--instances", "2")
    ok_json(supervisor.call("identity"))
    assert len(supervisor.descendants) >= 2
    assert supervisor.stop(signal.SIGINT) == []


def test_stop_ends_processes_started_by_the_function(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor("router.handler")
    tag = f"detached-{uuid.uuid4().hex}"
    ok_json(supervisor.call("spawn_detached", tag=tag))
    [child] = tagged_processes(tag)
    assert child in supervisor.descendants
    assert supervisor.stop() == []
    assert not is_alive(child)
