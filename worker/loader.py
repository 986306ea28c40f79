"""Import the entry point `<file>.<function>` from the code root."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from worker import protocol

_WORKER_DIR = os.path.dirname(os.path.abspath(__file__))
# An exception's message is cut to this length: a frame must stay well under its size cap.
_MAX_MESSAGE_CHARS = 64 * 1024


def load(entrypoint: str, code_root: str) -> Callable[..., Any]:
    """Import the module and return the handler; raises whatever the user's import raises."""
    module_name, _, function_name = entrypoint.rpartition(".")
    sys.path.insert(0, code_root)
    module = importlib.import_module(module_name)
    handler = getattr(module, function_name)
    if not callable(handler):
        raise TypeError(f"{entrypoint} is not callable: it is a {type(handler).__name__}")
    return handler


def describe(exc: BaseException) -> dict[str, Any]:
    """The platform's error object for an exception, with the runtime's own frames left out."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not _is_runtime_frame(frame.filename)
    ]
    try:
        message = str(exc)
    except Exception:  # the exception's own __str__ raised: say so, as Python's traceback does
        message = "<exception str() failed>"
    if len(message) > _MAX_MESSAGE_CHARS:
        message = f"{message[:_MAX_MESSAGE_CHARS]}... [{len(message)} characters in all]"
    trace = traceback.format_list(frames)
    return protocol.error(_encodable(message), type(exc).__name__, [_encodable(t) for t in trace])


def _encodable(text: str) -> str:
    """The text with lone surrogates escaped: a frame must carry whatever the message holds."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _is_runtime_frame(filename: str) -> bool:
    return (
        filename.startswith(_WORKER_DIR)
        or filename == importlib.__file__
        or filename.startswith("<frozen importlib")
    )
