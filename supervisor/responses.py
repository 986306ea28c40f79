"""How each outcome of a call is answered: status, headers, body, as the platform answers.

The worker maps a handler's result to a response (worker/events.py), but the worker is the
function's process: what it sends is checked here before any of it is written. The status must
be an int in 100..599, the header lines `Name: value` CRLF with a token for a name, no CR, LF or
NUL in a value, none of the headers that frame the message (Content-Length, Transfer-Encoding,
Connection: the HTTP layer writes those), and the whole within MAX_RESPONSE_HEAD_BYTES; the body
within --max-response-mb. A response that fails is answered 502, as a malformed one is.
"""

from __future__ import annotations

import json
import re
from typing import Any

from supervisor.calls import Ending, Outcome
from supervisor.config import MB
from worker import protocol

Headers = list[tuple[bytes, bytes]]
# status, headers, checked header lines, body, and the message of the call's ERROR log line
# (None: no error)
Response = tuple[int, Headers, bytes, bytes, str | None]

JSON = (b"Content-Type", b"application/json")
_FUNCTION_ERROR = (b"X-Function-Error", b"true")
_TIMEOUT_ERROR = {"errorMessage": "execution timeout exceeded",
                  "errorType": "JobExecutionTimeoutExceeded", "stackTrace": None}
# Outcomes that are the function's doing, answered 502 with the cause as errorType.
_FUNCTION_FAILURES = {
    Ending.MEMORY: "MemoryLimitExceeded",
    Ending.CRASH: "InstanceCrashed",
    Ending.PROTOCOL_ERROR: "WorkerProtocolError",
}
_MALFORMED_PREFIX = "Malformed serverless function response: "
# Header sections that passed the check: a function mostly answers with the same few.
_checked_lines: set[bytes] = set()
_CHECKED_LINES_LIMIT = 256
_HEADER_LINES = re.compile(
    rb"(?:(?!(?i:content-length|transfer-encoding|connection):)"
    rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [^\r\n\x00]*\r\n)*")


def render(outcome: Outcome, max_body_bytes: int) -> Response:
    """The response for an outcome; `max_body_bytes` bounds a function's response body."""
    ending = outcome.ending
    if ending is Ending.OK:
        return _checked(outcome.value, max_body_bytes)
    if ending in (Ending.FUNCTION_ERROR, Ending.INIT_ERROR):
        return error(502, outcome.value)
    if ending is Ending.MALFORMED:
        return malformed(outcome.detail, outcome.value)
    if ending is Ending.TIMEOUT:
        return error(504, _TIMEOUT_ERROR, "Execution timeout exceeded")
    if ending in _FUNCTION_FAILURES:
        return error(502, {"errorMessage": outcome.detail,
                           "errorType": _FUNCTION_FAILURES[ending], "stackTrace": None})
    if ending is Ending.REJECTED:
        return error(429, {"errorMessage": outcome.detail, "errorType": "TooManyRequests"},
                     function_error=False)
    if ending is Ending.SHUTDOWN:
        return error(503, {"errorMessage": "the server is shutting down",
                           "errorType": "ServiceUnavailable"}, function_error=False)
    if ending is Ending.CANCELLED:  # the client is gone, or half-closed: it names the call
        return error(499, {"errorMessage": "the client disconnected while the call waited",
                           "errorType": "ClientClosedRequest"}, function_error=False)
    return error(500, {"errorMessage": outcome.detail or "internal runtime error",
                       "errorType": "InternalError"}, function_error=False)


def error(status: int, body: dict[str, Any], log_message: str | None = None,
          function_error: bool = True) -> Response:
    """A JSON error response; X-Function-Error marks errors caused by the function."""
    headers = [JSON, _FUNCTION_ERROR] if function_error else [JSON]
    message = log_message or f"{body.get('errorType')}: {body.get('errorMessage')}"
    return status, headers, b"", json.dumps(body, ensure_ascii=False).encode(), message


def malformed(reason: str, payload: str) -> Response:
    """The platform's answer to a result that does not fit its response shape."""
    return error(502, {"errorMessage": _MALFORMED_PREFIX + reason,
                       "errorType": "ProxyIntegrationError", "payload": payload})


def _checked(value: Any, max_body_bytes: int) -> Response:
    """The worker's (status, header lines, body), once each part has passed its check."""
    status, lines, body = value
    if type(status) is not int or not 100 <= status <= 599:
        return malformed(f"statusCode must be an integer between 100 and 599, got {status!r}",
                         "")
    if type(lines) is not bytes or (lines not in _checked_lines and not _check_lines(lines)):
        return malformed("the response headers are not valid header fields", "")
    if type(body) is not bytes:
        return malformed("the response body is not bytes", "")
    if len(body) > max_body_bytes:
        return error(502, {"errorMessage": f"the function's response is "
                                           f"{len(body) / MB:.1f} MB, more than the "
                                           f"{max_body_bytes / MB:g} MB limit",
                           "errorType": "ResponseTooLarge", "stackTrace": None})
    return status, [], lines, body, None


def _check_lines(lines: bytes) -> bool:
    if len(lines) > protocol.MAX_RESPONSE_HEAD_BYTES or not _HEADER_LINES.fullmatch(lines):
        return False
    if len(_checked_lines) < _CHECKED_LINES_LIMIT:
        _checked_lines.add(lines)
    return True
