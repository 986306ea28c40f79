"""Unit tests for supervisor.responses: what a worker's reply may put on the wire."""

import json

import pytest

from supervisor.calls import Ending, Outcome
from supervisor.responses import render

pytestmark = pytest.mark.timeout(10)

LIMIT = 1000
GOOD_LINES = b"Content-Type: text/plain\r\nX-A: one\r\nX-A: two\r\nX-Empty: \r\n"


def rendered(status: object, lines: object, body: object) -> tuple:
    return render(Outcome(Ending.OK, (status, lines, body)), LIMIT)


def assert_malformed(response: tuple) -> None:
    status, headers, lines, body, message = response
    assert status == 502
    assert lines == b""
    assert json.loads(body)["errorType"] == "ProxyIntegrationError"
    assert (b"X-Function-Error", b"true") in headers
    assert message is not None


def test_a_checked_response_goes_out_as_the_worker_sent_it() -> None:
    assert rendered(201, GOOD_LINES, b"body") == (201, [], GOOD_LINES, b"body", None)


def test_no_headers_and_an_empty_body_are_fine() -> None:
    assert rendered(204, b"", b"") == (204, [], b"", b"", None)


@pytest.mark.parametrize("status", [99, 600, -1, 2**70, "200", 200.0, True, None])
def test_a_status_outside_100_to_599_or_not_an_int_is_malformed(status: object) -> None:
    assert_malformed(rendered(status, b"", b""))


@pytest.mark.parametrize("lines", [
    b"X-Bad: a\rb\r\n",  # CR inside a value
    b"X-Bad: a\nb\r\n",  # LF inside a value
    b"X-Bad: a\x00b\r\n",  # NUL
    b"X Bad: v\r\n",  # not a token
    b"X-Bad:v\r\n",  # not as the worker renders it
    b"X-Missing-End: v",
    b"\r\n",  # an empty line would end the header section early
    b"Content-Length: 0\r\n",  # the layer frames the message, nobody else
    b"content-length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: keep-alive\r\n",
    b"X-Ok: 1\r\nX-Split: a\r\n\r\nHTTP/1.1 200 OK\r\n",  # response splitting
    "X-Str: v\r\n",  # not bytes
    [b"X-List: v\r\n"],
    b"X-Long: " + b"v" * 70_000 + b"\r\n",  # over the 64 KiB head bound
])
def test_header_lines_that_could_break_the_framing_are_malformed(lines: object) -> None:
    assert_malformed(rendered(200, lines, b""))


def test_framing_names_are_refused_only_whole() -> None:
    lines = b"Content-Length-Hint: 5\r\nX-Connection: y\r\n"
    assert rendered(200, lines, b"") == (200, [], lines, b"", None)


def test_a_body_that_is_not_bytes_is_malformed() -> None:
    assert_malformed(rendered(200, b"", "text"))


def test_a_body_over_the_limit_is_response_too_large() -> None:
    status, _, _, body, _ = rendered(200, b"", b"x" * (LIMIT + 1))
    assert status == 502
    assert json.loads(body)["errorType"] == "ResponseTooLarge"
