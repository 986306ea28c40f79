"""Fixtures that run the real sfsupervisor command for the end-to-end tests (test_e2e_*.py)."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_helpers import Launch, Supervisor, shared_directory, supervisor_launcher

ROUTER_ENV_FILE = """\
# comment lines and blank lines are ignored

E2E_FROM_FILE=file-value
E2E_FILE_SPACES=a b c
E2E_FILE_EQUALS=x=y
"""
BACKGROUND_THREADS = 8
ROUTER_OPTIONS = (
    "--instances", "1",
    "--log-format", "json",
    "--env", "E2E_ONE=1",
    "--env", "E2E_TWO=two=2",
    "--token", "bare-token-value",
)


@pytest.fixture
def launch_supervisor(tmp_path: Path) -> Iterator[Launch]:
    """Start supervisors that live for one test (see `supervisor_launcher`)."""
    with supervisor_launcher(tmp_path) as launch:
        yield launch


@pytest.fixture(scope="module")
def launch_module_supervisor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    """Start supervisors shared by the tests of one module (see `supervisor_launcher`)."""
    with supervisor_launcher(tmp_path_factory.mktemp("module-supervisors")) as launch:
        yield launch


@pytest.fixture(scope="session")
def launch_session_supervisor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    """Start supervisors shared by the whole session (see `supervisor_launcher`)."""
    with supervisor_launcher(tmp_path_factory.mktemp("session-supervisors")) as launch:
        yield launch


@pytest.fixture(scope="session")
def router(
    launch_session_supervisor: Launch, tmp_path_factory: pytest.TempPathFactory
) -> Supervisor:
    """router.handler on one instance: JSON logs, --env, --env-file, a bare --token."""
    env_file = tmp_path_factory.mktemp("env-file") / "router.env"
    env_file.write_text(ROUTER_ENV_FILE)
    return launch_session_supervisor("router.handler", *ROUTER_OPTIONS, "--env-file", str(env_file))


@pytest.fixture(scope="session")
def router_pool(launch_session_supervisor: Launch) -> Supervisor:
    """router.handler on four instances with JSON logs and otherwise default options."""
    return launch_session_supervisor("router.handler", "--instances", "4", "--log-format", "json")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the test shares with its functions, in every sandbox tier: world-writable,
    outside the instances' private /tmp (see `shared_directory`); removed after the test."""
    with shared_directory() as directory:
        yield directory


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    """Threads for calls that run while the test goes on; teardown waits for them to end."""
    with ThreadPoolExecutor(BACKGROUND_THREADS) as pool:
        yield pool
