"""The context object a handler receives as its second argument."""

from __future__ import annotations

import time
from typing import Any


class Context:
    """The invocation context, shaped as the platform's.

    Its instance attributes are exactly the platform's context fields, so that
    `json.dumps(context, default=vars)` gives the same object as in the cloud. A call through
    the Lambda Invoke API with a client context also has `client_context`.
    """

    client_context: ClientContext | None = None
    identity: None = None
    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    log_group_name: str
    log_stream_name: str
    token: dict[str, Any] | None

    def __init__(self, static: dict[str, Any], request_id: str, deadline_ms: int) -> None:
        # `static` holds the fields above, in the platform's order: one update instead of an
        # attribute store each, on every call.
        self.__dict__.update(static)
        token = static["token"]
        if token is not None:
            self.token = dict(token)  # the function may change its copy
        self.request_id = request_id
        self.aws_request_id = request_id
        self.deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the runtime stops this call."""
        return max(0, self.deadline_ms - int(time.time() * 1000))


class ClientContext:
    """The caller's X-Amz-Client-Context, shaped as Lambda's Python runtime gives it:
    `client` (an object with the app's fields, or None), `custom` and `env` (dicts or None)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        client = fields.get("client")
        self.client = _Client(client) if isinstance(client, dict) else None
        self.custom = fields.get("custom")
        self.env = fields.get("env")


class _Client:
    def __init__(self, fields: dict[str, Any]) -> None:
        self.installation_id = fields.get("installation_id")
        self.app_title = fields.get("app_title")
        self.app_version_name = fields.get("app_version_name")
        self.app_version_code = fields.get("app_version_code")
        self.app_package_name = fields.get("app_package_name")
