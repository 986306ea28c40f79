"""End to end: what a function sees of its runtime: environment, context, state across calls."""

import pytest
from e2e_helpers import FUNCTIONS_DIR, Launch, Supervisor, ok_json

pytestmark = pytest.mark.timeout(30)

BARE_TOKEN = {"access_token": "bare-token-value", "expires_in": 43200, "token_type": "Bearer"}
EXPECTED_ENV = {
    "_HANDLER": "router.handler",
    "LAMBDA_TASK_ROOT": str(FUNCTIONS_DIR),
    "E2E_ONE": "1",
    "E2E_TWO": "two=2",
    "E2E_FROM_FILE": "file-value",
    "E2E_FILE_SPACES": "a b c",
    "E2E_FILE_EQUALS": "x=y",
}


@pytest.fixture(scope="module")
def async_server(launch_module_supervisor: Launch) -> Supervisor:
    """async_state.handler (an async def) on one instance."""
    return launch_module_supervisor("async_state.handler", "--instances", "1")


def test_environment_holds_runtime_and_user_variables(router: Supervisor) -> None:
    result = ok_json(router.call("env", names=",".join(EXPECTED_ENV)))
    assert result["env"] == EXPECTED_ENV


def test_working_directory_is_the_code_root(router: Supervisor) -> None:
    assert ok_json(router.call("env", names="HOME"))["cwd"] == str(FUNCTIONS_DIR)


def test_bare_token_string_becomes_a_bearer_token(router: Supervisor) -> None:
    assert ok_json(router.call("echo"))["context"]["token"] == BARE_TOKEN


def test_the_runtime_leaves_no_module_of_its_own_in_sight(router: Supervisor) -> None:
    # A function may have its own `worker` module; and nothing of the supervisor is loaded in a
    # worker, its compiled modules' library (setup.py) included.
    assert ok_json(router.call("modules"))["runtime_modules"] == []


def test_default_memory_limit_is_128(router: Supervisor) -> None:
    assert ok_json(router.call("echo"))["context"]["memory_limit_in_mb"] == 128


def test_remaining_time_counts_down_from_the_timeout(router: Supervisor) -> None:
    remaining_ms = ok_json(router.call("remaining"))["remaining_ms"]
    assert isinstance(remaining_ms, int | float)
    assert 3000 < remaining_ms <= 5000


def test_globals_persist_between_calls_of_an_instance(router: Supervisor) -> None:
    first = ok_json(router.call("count"))
    second = ok_json(router.call("count"))
    assert second == {"count": first["count"] + 1, "identity": first["identity"]}


def test_async_handler_keeps_its_loop_and_state(async_server: Supervisor) -> None:
    first = ok_json(async_server.request("GET", "/"))
    response = async_server.request("GET", "/")
    second = ok_json(response)
    assert (second["identity"], second["loop_id"]) == (first["identity"], first["loop_id"])
    assert second["same_loop"] is True
    assert second["calls"] == first["calls"] + 1
    assert second["echoed"] == f"echo:{response.headers['X-Request-Id']}"


def test_async_handler_exception_keeps_the_loop(async_server: Supervisor) -> None:
    before = ok_json(async_server.request("GET", "/"))
    failed = async_server.request("GET", "/", params={"fail": "1"})
    assert failed.status_code == 502
    assert failed.json()["errorType"] == "RuntimeError"
    after = ok_json(async_server.request("GET", "/"))
    assert (after["identity"], after["loop_id"], after["same_loop"]) == (
        before["identity"], before["loop_id"], True
    )
