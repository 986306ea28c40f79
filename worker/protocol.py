"""Frames between the supervisor and a worker.

Each worker has a private pair of pipes (never its stdin/stdout, which are the function's log
streams). A frame is one msgpack array whose first element says what it is; msgpack arrays are
self-delimiting, so the stream needs no length prefix. This module does no I/O: both sides import
it, and the worker side must stay light (standard library and msgpack only).

supervisor -> worker
    [INIT, VERSION, entrypoint, static_context, limits, environment, sandbox]
                                                  once, right after the worker starts; limits:
                                                  {"max_response_bytes": int,
                                                   "address_space_bytes": int | None,
                                                   "measure_peak": bool};
                                                  environment: the function's os.environ, set
                                                  before its code is imported; sandbox: how
                                                  the worker seals itself (worker/sandbox.py)
    [CALL, call_id, event, request_id, deadline_ms]
worker -> supervisor
    [READY, VERSION, init_ms]                     the entry point imported and resolved
    [INIT_ERROR, error]                           it did not; the worker exits after sending this
    [RESULT, call_id, value, peak_rss_kb]         the handler returned value (peak_rss_kb is 0
                                                  unless measure_peak: a cgroup may know better)
    [FAILURE, call_id, error, peak_rss_kb]        the handler raised
    [UNSERIALIZABLE, call_id, reason, payload, peak_rss_kb]
                                                  the handler returned something that is not JSON

An `error` is the platform's error object: {"errorMessage": str, "errorType": str,
"stackTrace": [str, ...]}.
"""

from __future__ import annotations

from typing import Any

import msgpack

VERSION = 2

INIT = 0
CALL = 1
READY = 10
INIT_ERROR = 11
RESULT = 12
FAILURE = 13
UNSERIALIZABLE = 14

# What a worker accepts from the supervisor: a 3.5 MB request body grows by a third as base64.
MAX_SUPERVISOR_FRAME_BYTES = 16 * 1024 * 1024
# Room on top of the response limit for a frame's own fields.
_FRAME_OVERHEAD_BYTES = 64 * 1024


class NotSerializable(TypeError):
    """The value holds an object that JSON (and so the platform) cannot carry."""


def _refuse(obj: object) -> Any:
    if isinstance(obj, int):  # msgpack asks about the ints it cannot carry
        raise NotSerializable(f"the integer {obj} does not fit in 64 bits")
    raise NotSerializable(f"Object of type {type(obj).__name__} is not JSON serializable")


_packer = msgpack.Packer(use_bin_type=True, datetime=False, default=_refuse)


def pack(frame: list[Any]) -> bytes:
    """Encode one frame. Raises NotSerializable for values JSON could not carry."""
    try:
        return _packer.pack(frame)
    except NotSerializable:
        _packer.reset()
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        _packer.reset()
        raise NotSerializable(str(exc)) from exc


def unpacker(max_frame_bytes: int) -> msgpack.Unpacker:
    """A streaming decoder that refuses any frame larger than max_frame_bytes."""
    return msgpack.Unpacker(
        raw=False,
        strict_map_key=False,
        use_list=True,
        max_buffer_size=max_frame_bytes,
    )


def frame_cap(max_response_bytes: int) -> int:
    """The largest frame the supervisor reads from a worker; a larger one kills the instance.

    The worker refuses to send a reply over max_response_bytes itself, so only a worker whose
    runtime was tampered with ever reaches this cap.
    """
    return max_response_bytes + _FRAME_OVERHEAD_BYTES


def error(message: str, error_type: str, stack_trace: list[str] | None) -> dict[str, Any]:
    """The platform's error object."""
    return {"errorMessage": message, "errorType": error_type, "stackTrace": stack_trace}
