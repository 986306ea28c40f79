"""The Lambda Invoke API beside the platform's HTTP: what boto3, the AWS CLI and SAM send.

`POST /2015-03-31/functions/{name}/invocations` calls function `name` (in single-function mode,
whatever the name) with the body, a JSON document, as the event; the handler's result comes
back as JSON with status 200. The headers say how:

- X-Amz-Invocation-Type: RequestResponse (the default) waits for the result; Event answers 202
  and runs the call in the background; DryRun answers 204 and runs nothing.
- X-Amz-Log-Type: Tail adds X-Amz-Log-Result, the base64 of the last 4 KB of the call's log.
- X-Amz-Client-Context: base64 of a JSON object, the handler's `context.client_context`.

As Lambda does, a handler that fails is still answered 200, marked X-Amz-Function-Error:
Unhandled, with the error object as the body; a request the service refuses is answered with
its status, the error's name in x-amzn-ErrorType and {"Type", "message"} as the body, which is
what botocore turns into `client.exceptions.<name>`.

This module reads requests and shapes answers; http.py makes and submits the call.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from supervisor import responses
from supervisor.calls import Ending, Outcome
from supervisor.http11 import Answer, Request

PATH_PREFIX = b"/2015-03-31/functions/"
_PATH_SUFFIX = b"/invocations"
_INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
_LOG_TYPES = ("None", "Tail")
_VERSION = (b"X-Amz-Executed-Version", b"$LATEST")
_UNHANDLED = (b"X-Amz-Function-Error", b"Unhandled")
# What the runtime says when the worker ends mid-call, as Lambda's runtime interface does.
_RUNTIME_FAILURES = {
    Ending.MEMORY: "Runtime.OutOfMemory",
    Ending.CRASH: "Runtime.ExitError",
    Ending.PROTOCOL_ERROR: "Runtime.ExitError",
}
# Outcomes that are no fault of the function: the service's own errors.
_SERVICE_ERRORS = {
    Ending.REJECTED: (429, "TooManyRequestsException"),
    Ending.SHUTDOWN: (503, "ServiceException"),
    Ending.CANCELLED: (499, "ClientClosedRequest"),
    Ending.RUNTIME_ERROR: (500, "ServiceException"),
}


class Refused(Exception):
    """A request the API answers without a call: its status, error name and message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


@dataclass(frozen=True)
class Invocation:
    """What an Invoke request asks for."""

    function: str
    kind: str  # one of _INVOCATION_TYPES
    tail: bool
    client_context: dict[str, Any] | None


def read(request: Request) -> Invocation:
    """The invocation a request under PATH_PREFIX asks for; raises Refused if it is not one."""
    path = request.path
    if request.method != "POST" or not path.endswith(_PATH_SUFFIX):
        raise Refused(404, "UnknownOperationException",
                      f"no operation {request.method} {path.decode('latin-1')}: the Invoke API "
                      f"is POST /2015-03-31/functions/NAME/invocations")
    name = _function_name(unquote(path[len(PATH_PREFIX):-len(_PATH_SUFFIX)].decode("latin-1")))
    headers = {key: value for key, value in request.headers if key.startswith(b"x-amz-")}
    kind = _header(headers, b"x-amz-invocation-type", "RequestResponse", _INVOCATION_TYPES)
    log_type = _header(headers, b"x-amz-log-type", "None", _LOG_TYPES)
    context = headers.get(b"x-amz-client-context")
    invocation = Invocation(name, kind, log_type == "Tail" and kind == "RequestResponse",
                            _client_context(context) if context else None)
    _check_event(request.body)
    return invocation


def not_found(name: str) -> Answer:
    """404 ResourceNotFoundException for a function this supervisor does not serve."""
    return refusal(Refused(404, "ResourceNotFoundException", f"Function not found: {name}"))


def refusal(refused: Refused) -> Answer:
    """The service's error answer, as botocore reads it."""
    body = json.dumps({"Type": "User", "message": str(refused)}).encode()
    error_type = (b"x-amzn-ErrorType", refused.error_type.encode())
    return refused.status, [responses.JSON, error_type], body


def render(outcome: Outcome, request_id: str, timeout_s: float,
           max_body_bytes: int) -> responses.Response:
    """The answer to an invocation's outcome (status, headers, body, ERROR line's message)."""
    ending = outcome.ending
    if ending is Ending.OK:
        _, _, _, body, message = responses.render(outcome, max_body_bytes)
        if message is None:
            return 200, [responses.JSON, _VERSION], b"", body, None
        return _unhandled(json.loads(body), message)
    if ending in (Ending.FUNCTION_ERROR, Ending.INIT_ERROR):
        return _unhandled(outcome.value)
    if ending is Ending.MALFORMED:
        return _unhandled({"errorMessage": f"Unable to marshal response: {outcome.detail}",
                           "errorType": "Runtime.MarshalError"})
    if ending is Ending.TIMEOUT:
        return _unhandled({"errorMessage": f"{_timestamp()} {request_id} Task timed out after "
                                           f"{timeout_s:.2f} seconds",
                           "errorType": "Sandbox.Timedout"})
    if ending in _RUNTIME_FAILURES:
        return _unhandled({"errorMessage": f"RequestId: {request_id} Error: Runtime exited: "
                                           f"{outcome.detail}",
                           "errorType": _RUNTIME_FAILURES[ending]})
    status, error_type = _SERVICE_ERRORS.get(ending, (500, "ServiceException"))
    message = outcome.detail or "internal runtime error"
    _, headers, body = refusal(Refused(status, error_type, message))
    return status, headers, b"", body, f"{error_type}: {message}"


def log_result(tail: str) -> tuple[bytes, bytes]:
    """The X-Amz-Log-Result header for the end of a call's log."""
    return b"X-Amz-Log-Result", base64.b64encode(tail.encode("utf-8", "replace"))


def _unhandled(error: dict[str, Any], message: str | None = None) -> responses.Response:
    body = json.dumps(error, ensure_ascii=False).encode()
    log_message = message or f"{error.get('errorType')}: {error.get('errorMessage')}"
    return 200, [responses.JSON, _VERSION, _UNHANDLED], b"", body, log_message


def _function_name(text: str) -> str:
    """The function's name in any form the API accepts: `name`, `name:qualifier`, a partial
    ARN (`123456789012:function:name`) or a full one (`arn:aws:lambda:…:function:name:1`)."""
    parts = text.split(":")
    if "function" in parts[:-1]:
        return parts[parts.index("function") + 1]
    return parts[0]


def _header(headers: dict[bytes, bytes], name: bytes, default: str,
            allowed: tuple[str, ...]) -> str:
    value = headers.get(name, default.encode()).decode("latin-1")
    if value not in allowed:
        raise Refused(400, "InvalidParameterValueException",
                      f"{name.decode()}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _client_context(encoded: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise Refused(400, "InvalidRequestContentException",
                      f"Client context must be a valid Base64-encoded JSON object: {exc}") from None
    if not isinstance(fields, dict):
        raise Refused(400, "InvalidRequestContentException",
                      "Client context must be a valid Base64-encoded JSON object")
    return fields


def _check_event(body: bytes) -> None:
    if not body.strip():
        return
    try:
        json.loads(body)
    except ValueError as exc:
        raise Refused(400, "InvalidRequestContentException",
                      f"Could not parse request body into json: {exc}") from None


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
