"""What every peer adapter shares: load the handler, build its event, map what it returns."""

from __future__ import annotations

import asyncio
import base64
import importlib
import inspect
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HANDLER_VARIABLE = "BENCH_HANDLER"
FUNCTIONS_DIR = Path(__file__).resolve().parent.parent / "functions"
CONTEXT = SimpleNamespace(function_name="benchmark", function_version="$latest",
                          memory_limit_in_mb=128, request_id="benchmark")

_loops = threading.local()


def load_handler() -> Callable[..., Any]:
    """Import the handler named by $BENCH_HANDLER (`<file>.<function>` in functions/)."""
    module_name, _, function_name = os.environ[HANDLER_VARIABLE].rpartition(".")
    if str(FUNCTIONS_DIR) not in sys.path:
        sys.path.insert(0, str(FUNCTIONS_DIR))
    return getattr(importlib.import_module(module_name), function_name)


def is_async(handler: Callable[..., Any]) -> bool:
    """True for an `async def` handler."""
    return inspect.iscoroutinefunction(handler)


def build_event(method: str, headers: dict[str, str], query: dict[str, str],
                body: bytes) -> dict[str, Any]:
    """A minimal platform-shaped event; `headers` has lower-case names."""
    if headers.get("content-type", "").startswith("application/json"):
        text, encoded = body.decode(), False
    else:
        text, encoded = base64.b64encode(body).decode(), True
    return {"httpMethod": method, "headers": headers, "queryStringParameters": query,
            "body": text, "isBase64Encoded": encoded}


def to_response(result: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body bytes of a handler's `{"statusCode", "headers", "body"}`."""
    body = result.get("body", "")
    payload = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
    return result.get("statusCode", 200), list(result.get("headers", {}).items()), payload


def call_blocking(handler: Callable[..., Any], event: dict[str, Any]) -> dict[str, Any]:
    """Call a handler from synchronous code; an async one runs on this thread's own loop."""
    result = handler(event, CONTEXT)
    if not inspect.isawaitable(result):
        return result
    loop = getattr(_loops, "loop", None)
    if loop is None:
        loop = _loops.loop = asyncio.new_event_loop()
    return loop.run_until_complete(result)
