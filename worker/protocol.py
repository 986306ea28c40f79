"""Frames between the supervisor and a worker.

Each worker has a private pair of pipes (never its stdin/stdout, which are the function's log
streams). A frame is one msgpack array whose first element says what it is; msgpack arrays are
self-delimiting, so the stream needs no length prefix. This module does no I/O: both sides import
it, and the worker side must stay light (standard library and msgpack only).

The supervisor sends a request's raw parts and the worker builds the platform's event, calls the
handler and maps its result to an HTTP response (worker/events.py): that work costs the worker,
of which there are many, rather than the supervisor, which every call crosses. A request or
response body travels as msgpack bin, last in its frame, so that a large one is written as a
second buffer of one gathered write instead of being copied into the frame (pack_with_body).

supervisor -> worker
    [INIT, VERSION, entrypoint, static_context, limits, environment, sandbox]
                                                  once, right after the worker starts; limits:
                                                  {"max_response_bytes": int,
                                                   "address_space_bytes": int | None,
                                                   "measure_peak": bool};
                                                  environment: the function's os.environ, set
                                                  before its code is imported; sandbox: how
                                                  the worker seals itself (worker/sandbox.py)
    [CALL, call_id, request_id, deadline_ms, request, body]
        request: [HTTP_EVENT | RAW_EVENT, method, query, headers, client_ip, client_port,
                  request_time]
            HTTP_EVENT   the event is the platform's HTTP event, the result an HTTP response
            RAW_EVENT    ?integration=raw (or async): the event is the body as text, and the
                         result is the body of a 200
            method       str
            query        bytes: the raw query string, without "?"
            headers      [[name, value], ...]: bytes as received, names lower-case, in order
            client_ip    str ("" when unknown), client_port int (0 when unknown)
            request_time float: when the request arrived, epoch seconds
        request: [LAMBDA_EVENT, client_context]
            LAMBDA_EVENT the Lambda Invoke API: the event is the body as JSON, the result is
                         sent as JSON
            client_context  the caller's client context (a JSON object), or None
        body: bytes
worker -> supervisor
    [READY, VERSION, init_ms]                     the entry point imported and resolved
    [INIT_ERROR, error]                           it did not; the worker exits after sending this
    [RESPONSE, call_id, peak_kb, output, status, header_lines, body]
                                                  the handler's result, mapped: status int,
                                                  header_lines bytes (`Name: value` CRLF each),
                                                  body bytes
    [FAILURE, call_id, peak_kb, output, error]    the handler raised, or its response is too large
    [MALFORMED, call_id, peak_kb, output, reason, payload]
                                                  the result does not fit the platform's response
                                                  (not JSON, a bad field): why, and the result as
                                                  text
    peak_kb   the call's peak resident memory (0 unless measure_peak: a cgroup may know better)
    output    OUTPUT_STDOUT | OUTPUT_STDERR: the function's output pipe still holds bytes it
              wrote during the call, so the supervisor reads it before the call's END line

An `error` is the platform's error object: {"errorMessage": str, "errorType": str,
"stackTrace": [str, ...]}. The supervisor checks every reply before it writes any of it.
"""

from __future__ import annotations

from typing import Any

import msgpack

VERSION = 2

INIT = 0
CALL = 1
READY = 10
INIT_ERROR = 11
RESPONSE = 12
FAILURE = 13
MALFORMED = 14

HTTP_EVENT = 0
RAW_EVENT = 1
LAMBDA_EVENT = 2

OUTPUT_STDOUT = 1
OUTPUT_STDERR = 2

# What a worker accepts from the supervisor: the largest request body the command line allows
# (1024 MB), and room for the request's head.
MAX_SUPERVISOR_FRAME_BYTES = 1025 * 1024 * 1024
# The largest header section a response may have (its `Name: value` lines).
MAX_RESPONSE_HEAD_BYTES = 64 * 1024
# Room on top of the response limit for a frame's own fields.
_FRAME_OVERHEAD_BYTES = 64 * 1024
# A body this large is written as a buffer of its own rather than copied into the frame.
GATHER_BODY_BYTES = 64 * 1024
_FIXARRAY = 0x90
_MAX_FIXARRAY = 15


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


def pack_with_body(fields: list[Any], body: bytes) -> list[bytes]:
    """Encode the frame `fields + [body]` as buffers to be written in order.

    A large body is not copied: it is the second buffer, after the frame's head and the bin
    header (msgpack's own encoding, written by hand). `fields` may be changed.
    """
    if len(body) < GATHER_BODY_BYTES:
        fields.append(body)
        return [pack(fields)]
    assert len(fields) < _MAX_FIXARRAY
    head = pack(fields)  # a fixarray: its first byte is the element count
    return [bytes((_FIXARRAY | len(fields) + 1,)) + head[1:] + _bin_header(len(body)), body]


def _bin_header(size: int) -> bytes:
    if size < 0x100:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 0x10000:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


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
