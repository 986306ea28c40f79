"""End to end: the development loop. --reload picks up saved code with no failed call."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_helpers import Launch, Supervisor, ok_json

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
