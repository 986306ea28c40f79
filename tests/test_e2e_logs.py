"""End to end: the supervisor's log (JSON format), its attribution and the root logger."""

import json
import re
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from e2e_helpers import (
    READY_MARKER,
    Supervisor,
    complete_lines,
    ok_json,
    only_runtime_line,
    runtime_line_sequence,
)

pytestmark = pytest.mark.timeout(60)

BURST_CALLS = 20
CHATTER_LINES = 3
REQUIRED_FIELDS = {"time", "level", "message", "function", "instance", "request_id"}
REPORT_LINE = re.compile(
    r"REPORT RequestID: (?P<request_id>\S+) Duration: (?P<duration>\d+\.\d{3}) ms"
    r" Billed Duration: (?P<billed>\d+) ms Memory Size: (?P<memory>\d+) MB"
    r" Max Memory Used: (?P<used>\d+) MB Queuing Duration: \d+\.\d{3} ms"
    r"(?P<init> Function Init Duration: \d+\.\d{3} ms)?"
)


@dataclass(frozen=True)
class ChatterCall:
    """One call of the `chatter` action: its tag and the request id it got."""

    tag: str
    request_id: str

    def expected_lines(self) -> dict[str, str]:
        """Each unique text the call wrote, with the stream it should be logged on."""
        lines = {f"{self.tag} logging": "stdout"}
        for number in range(CHATTER_LINES):
            lines[f"{self.tag} stdout {number}"] = "stdout"
            lines[f"{self.tag} stderr {number}"] = "stderr"
        return lines


@dataclass(frozen=True)
class Burst:
    """Concurrent chatter calls on four instances and the log records once all were reported."""

    calls: list[ChatterCall]
    records: list[dict[str, Any]]


def chatter(router_pool: Supervisor, index: int) -> ChatterCall:
    """Make one chatter call with a unique tag."""
    tag = f"burst{index}-{uuid.uuid4().hex}"
    response = router_pool.call("chatter", tag=tag)
    ok_json(response)
    return ChatterCall(tag, response.headers["X-Request-Id"])


@pytest.fixture(scope="module")
def burst(router_pool: Supervisor) -> Burst:
    """BURST_CALLS concurrent chatter calls on the four-instance router."""
    with ThreadPoolExecutor(BURST_CALLS) as pool:
        calls = list(pool.map(lambda index: chatter(router_pool, index), range(BURST_CALLS)))
    records = router_pool.wait_for_reports(call.request_id for call in calls)
    return Burst(calls, records)


def test_each_call_logs_start_end_report_once(burst: Burst) -> None:
    assert len({call.request_id for call in burst.calls}) == BURST_CALLS
    for call in burst.calls:
        assert runtime_line_sequence(burst.records, call.request_id) == ["START", "END", "REPORT"]
        lines = [only_runtime_line(burst.records, kind, call.request_id)[1]
                 for kind in ("START", "END", "REPORT")]
        assert {line["request_id"] for line in lines} == {call.request_id}
        assert len({line["instance"] for line in lines}) == 1
        assert type(lines[0]["instance"]) is int


def test_function_output_is_attributed_to_its_call(burst: Burst) -> None:
    for call in burst.calls:
        start_index, start = only_runtime_line(burst.records, "START", call.request_id)
        end_index, _ = only_runtime_line(burst.records, "END", call.request_id)
        for text, stream in call.expected_lines().items():
            found = [(index, record) for index, record in enumerate(burst.records)
                     if text in str(record.get("message"))]
            assert len(found) == 1, f"{text!r} logged {len(found)} times"
            index, record = found[0]
            assert record["request_id"] == call.request_id, record
            assert record["instance"] == start["instance"], record
            assert record["stream"] == stream, record
            assert start_index < index < end_index, f"{text!r} not between START and END"


def test_logging_lines_carry_the_request_id_in_their_text(burst: Burst) -> None:
    for call in burst.calls:
        [record] = [record for record in burst.records
                    if f"{call.tag} logging" in str(record.get("message"))]
        assert call.request_id in record["message"]
        assert "WARN" in record["message"]


def test_report_lines_have_the_platform_format(burst: Burst) -> None:
    for call in burst.calls:
        _, report = only_runtime_line(burst.records, "REPORT", call.request_id)
        match = REPORT_LINE.fullmatch(report["message"])
        assert match, report["message"]
        duration_ms = float(match["duration"])
        billed_ms = int(match["billed"])
        assert match["request_id"] == call.request_id
        assert billed_ms % 100 == 0
        assert duration_ms <= billed_ms < duration_ms + 100
        assert int(match["memory"]) == 128
        assert int(match["used"]) > 0


def test_init_duration_only_on_the_first_call_of_each_instance(burst: Burst) -> None:
    reports_by_instance = defaultdict(list)
    for record in burst.records:
        match = REPORT_LINE.fullmatch(str(record.get("message")))
        if match:
            reports_by_instance[record["instance"]].append(match["init"] is not None)
    assert len(reports_by_instance) == 4
    for instance, init_flags in reports_by_instance.items():
        assert init_flags == [True] + [False] * (len(init_flags) - 1), instance


def test_every_log_line_is_a_json_object_with_the_required_fields(
    burst: Burst, router_pool: Supervisor
) -> None:
    for line in complete_lines(router_pool.log_text()):
        record = json.loads(line)
        assert set(record) >= REQUIRED_FIELDS, record
        assert record["instance"] is None or type(record["instance"]) is int, record
        assert record["request_id"] is None or isinstance(record["request_id"], str), record
        assert isinstance(record["message"], str), record


def test_instances_ready_and_the_address_are_logged(router_pool: Supervisor) -> None:
    messages = [str(record.get("message")) for record in router_pool.log_records()]
    assert any(READY_MARKER in message for message in messages)
    assert f"127.0.0.1:{router_pool.port}" in router_pool.output_text()


def test_root_logger_is_preconfigured(router: Supervisor) -> None:
    tag = f"levels-{uuid.uuid4().hex}"
    response = router.call("log_levels", tag=tag)
    probe = ok_json(response)
    request_id = response.headers["X-Request-Id"]
    assert probe == {"handler_count": 1, "initial_level": 30, "basic_config_changed_nothing": True}
    records = router.wait_for_reports([request_id])
    logged = {record["message"]: record for record in records if tag in str(record.get("message"))}
    assert not [message for message in logged if "info before setLevel" in message]
    for text in (f"{tag} warning", f"{tag} info after setLevel"):
        [record] = [record for message, record in logged.items() if text in message]
        assert record["stream"] == "stdout"
        assert record["request_id"] == request_id
        assert request_id in record["message"]
