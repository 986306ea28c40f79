"""End to end: handler exceptions, init errors, timeouts and crashed instances."""

import re
import time

import httpx
import pytest
from e2e_helpers import (
    Launch,
    Supervisor,
    call_instance,
    ok_json,
    only_runtime_line,
    process_gone,
    runtime_line_sequence,
    serving_pid,
)

pytestmark = pytest.mark.timeout(60)

FRAGILE_TIMEOUT_S = 2
TIMEOUT_BODY = {
    "errorMessage": "execution timeout exceeded",
    "errorType": "JobExecutionTimeoutExceeded",
    "stackTrace": None,
}
ERROR_KEYS = {"errorMessage", "errorType", "stackTrace"}
FAILED_CALL_LINES = ["START", "END", "ERROR", "REPORT"]
SLOW_INIT_TIMEOUT_S = 2
# slow_init.py sleeps 0.8 s while imported: 0.8 + 1.5 > 2 on a first call, 1.5 < 2 after it.
SLOW_CALL_S = 1.5


@pytest.fixture(scope="module")
def fragile(launch_module_supervisor: Launch) -> Supervisor:
    """router.handler on one instance with a 2 s timeout, for timeouts and crashes.

    No spare: with one process, the instance that served the last call is the one a crash
    kills (a spare that turned ready in between could otherwise serve the crashing call).
    """
    return launch_module_supervisor(
        "router.handler", "--instances", "1", "--spares", "0",
        "--timeout", str(FRAGILE_TIMEOUT_S), "--log-format", "json",
    )


def identity_of(response: httpx.Response) -> str:
    """The instance identity a router action reported (see functions/instance_id.py)."""
    return ok_json(response)["identity"]


def assert_function_error(response: httpx.Response, status: int) -> dict:
    """Check the status and the headers of a failed call; return its JSON body."""
    assert response.status_code == status, response.text
    assert response.headers["X-Function-Error"] == "true"
    assert response.headers["X-Request-Id"]
    return response.json()


def assert_error_logged(supervisor: Supervisor, response: httpx.Response, status: int) -> None:
    """The failed call's log lines: START, END, ERROR (with the status) and REPORT."""
    request_id = response.headers["X-Request-Id"]
    records = supervisor.wait_for_reports([request_id])
    assert runtime_line_sequence(records, request_id) == FAILED_CALL_LINES
    _, error_line = only_runtime_line(records, "ERROR", request_id)
    pattern = rf"ERROR RequestID: {re.escape(request_id)} Code: {status} Message: .+"
    assert re.fullmatch(pattern, error_line["message"]), error_line["message"]


def test_handler_exception_gives_502_and_the_instance_keeps_serving(router: Supervisor) -> None:
    before = identity_of(router.call("identity"))
    response = router.call("raise", message="boom-e2e")
    error = assert_function_error(response, 502)
    assert set(error) == ERROR_KEYS
    assert error["errorType"] == "CustomFailure"
    assert error["errorMessage"] == "boom-e2e"
    assert all(isinstance(frame, str) for frame in error["stackTrace"])
    assert any("router.py" in frame for frame in error["stackTrace"]), error["stackTrace"]
    assert identity_of(router.call("identity")) == before


def test_handler_exception_is_logged_as_error(router: Supervisor) -> None:
    response = router.call("raise", message="logged-e2e")
    assert_error_logged(router, response, 502)


@pytest.mark.parametrize(
    ("entrypoint", "error_type"),
    [
        ("import_missing.handler", "ModuleNotFoundError"),
        ("import_zero.handler", "ZeroDivisionError"),
        ("router.no_such_handler", "AttributeError"),
        ("router.NOT_CALLABLE", "TypeError"),
    ],
)
def test_init_error_gives_502_with_its_type(
    launch_supervisor: Launch, entrypoint: str, error_type: str
) -> None:
    supervisor = launch_supervisor(entrypoint, "--log-format", "json", wait_instances=False)
    for _ in range(2):
        error = assert_function_error(supervisor.request("GET", "/"), 502)
        assert set(error) == ERROR_KEYS
        assert error["errorType"] == error_type
        assert isinstance(error["errorMessage"], str)
        assert all(isinstance(frame, str) for frame in error["stackTrace"])


def test_import_error_names_the_missing_module(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor("import_missing.handler", wait_instances=False)
    error = assert_function_error(supervisor.request("GET", "/"), 502)
    assert "no_such_module_e2e" in error["errorMessage"]


def test_timeout_gives_504_then_a_fresh_instance(fragile: Supervisor) -> None:
    served = fragile.call("identity")
    before, pid_before = identity_of(served), serving_pid(fragile, served)
    started = time.monotonic()
    response = fragile.call("sleep", seconds=10)
    elapsed_s = time.monotonic() - started
    assert assert_function_error(response, 504) == TIMEOUT_BODY
    assert FRAGILE_TIMEOUT_S - 0.1 <= elapsed_s < FRAGILE_TIMEOUT_S + 1.5
    assert identity_of(fragile.call("identity")) != before
    assert process_gone(pid_before), f"timed-out instance {pid_before} still runs"


def test_timeout_is_logged_as_error(fragile: Supervisor) -> None:
    response = fragile.call("sleep", seconds=10)
    assert response.status_code == 504
    assert_error_logged(fragile, response, 504)


@pytest.mark.parametrize(
    ("action", "cause"),
    [
        ("exit_3", "code 3"),
        ("os_exit_1", "code 1"),
        ("sigkill", "SIGKILL"),
        ("segfault", "SIGSEGV"),
    ],
)
def test_crash_gives_502_then_a_fresh_instance(
    fragile: Supervisor, action: str, cause: str
) -> None:
    served = fragile.call("identity")
    before, pid_before = identity_of(served), serving_pid(fragile, served)
    error = assert_function_error(fragile.call(action), 502)
    assert error["errorType"] == "InstanceCrashed"
    assert cause in error["errorMessage"], error["errorMessage"]
    assert identity_of(fragile.call("identity")) != before
    assert process_gone(pid_before), f"crashed instance {pid_before} still runs"


def test_crash_is_logged_and_another_instance_serves_next(fragile: Supervisor) -> None:
    crash = fragile.call("exit_3")
    assert crash.status_code == 502
    assert_error_logged(fragile, crash, 502)
    recovery = fragile.call("identity")
    assert recovery.status_code == 200
    crashed_instance = call_instance(fragile, crash.headers["X-Request-Id"])
    replacement_instance = call_instance(fragile, recovery.headers["X-Request-Id"])
    # A warm spare (or the crashed instance's replacement) serves next, never the dead one.
    assert replacement_instance != crashed_instance


def test_first_call_timeout_includes_instance_init(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor(
        "slow_init.handler", "--instances", "1", "--timeout", str(SLOW_INIT_TIMEOUT_S)
    )
    first = supervisor.request("GET", "/", params={"seconds": SLOW_CALL_S})
    assert assert_function_error(first, 504) == TIMEOUT_BODY
    warm = identity_of(supervisor.request("GET", "/", params={"seconds": 0}))
    assert identity_of(supervisor.request("GET", "/", params={"seconds": SLOW_CALL_S})) == warm
