"""How each outcome of a call is answered: status, headers, body, as the platform answers."""

from __future__ import annotations

import json
from typing import Any

from supervisor import events
from supervisor.calls import Ending, Outcome

Headers = list[tuple[bytes, bytes]]
# status, headers, body, and the message of the call's ERROR log line (None: no error)
Response = tuple[int, Headers, bytes, str | None]

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


def render(outcome: Outcome, raw: bool) -> Response:
    """The response for an outcome; `raw` is the ?integration=raw mapping of results."""
    ending = outcome.ending
    if ending is Ending.OK:
        return _result(outcome.value, raw)
    if ending in (Ending.FUNCTION_ERROR, Ending.INIT_ERROR):
        return error(502, outcome.value)
    if ending is Ending.UNSERIALIZABLE:
        return error(502, {
            "errorMessage": "Malformed serverless function response: "
                            f"the result is not JSON-serializable: {outcome.detail}",
            "errorType": "ProxyIntegrationError",
            "payload": outcome.value,
        })
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
    if ending is Ending.CANCELLED:  # nobody reads this answer: it names the call in the log
        return error(499, {"errorMessage": "the client disconnected while the call waited",
                           "errorType": "ClientClosedRequest"}, function_error=False)
    return error(500, {"errorMessage": outcome.detail or "internal runtime error",
                       "errorType": "InternalError"}, function_error=False)


def error(status: int, body: dict[str, Any], log_message: str | None = None,
          function_error: bool = True) -> Response:
    """A JSON error response; X-Function-Error marks errors caused by the function."""
    headers = [JSON, _FUNCTION_ERROR] if function_error else [JSON]
    message = log_message or f"{body.get('errorType')}: {body.get('errorMessage')}"
    return status, headers, json.dumps(body, ensure_ascii=False).encode(), message


def _result(value: Any, raw: bool) -> Response:
    try:
        if raw:
            return 200, [], events.map_raw_response(value), None
        status, headers, body = events.map_http_response(value)
        return status, headers, body, None
    except events.MalformedResponse as exc:
        return error(502, events.malformed_error(str(exc), value))
