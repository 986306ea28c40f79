"""Translation between HTTP and the platform's function events, done in the worker.

`build_http_event` turns an HTTP request into the event a handler receives (HTTP integration),
`map_http_response` turns the handler's result back into an HTTP response the way the cloud's
gateway does; `build_raw_event` and `map_raw_response` do the same for `?integration=raw`.

This runs in the worker, not in the supervisor: the supervisor is one process that every call
crosses, so its CPU per call caps the whole server, while the workers are many. The worker is
the function's process and cannot be trusted, so the supervisor checks what comes back before
writing it (supervisor/responses.py). Everything here is pure, standard library only, and runs
on the hot path of every request.
"""

import base64
import json
import random
import string
import time
from collections.abc import Iterable
from urllib.parse import parse_qsl

_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_CACHE_LIMIT = 1024
# name -> canonical name, or "" when the name is not a valid token (no canonical name is empty).
_canonical_cache: dict[str, str] = {}
# a response's `headers` map, as its items -> the header section's lines (see
# map_http_response_lines).
_lines_cache: dict[tuple[tuple[object, object], ...], bytes] = {}
# raw request header name -> canonical name, or "" when the header never reaches the event.
_request_name_cache: dict[bytes, str] = {}

_REMOVED_REQUEST_HEADERS = frozenset({
    "Expect", "Te", "Trailer", "Upgrade", "Proxy-Authenticate", "Authorization", "Connection",
    "Content-Md5", "Max-Forwards", "Server", "Transfer-Encoding", "Www-Authenticate", "Cookie",
})  # fmt: skip
# The router sets these itself; whatever the client sent under these names is discarded.
_ROUTER_HEADERS = frozenset({"X-Real-Remote-Address", "X-Request-Id", "X-Trace-Id"})
_FORWARDED_FOR = "X-Forwarded-For"

_DROPPED_RESPONSE_HEADERS = frozenset({
    "Host", "Authorization", "User-Agent", "Connection", "Max-Forwards", "Cookie", "Content-Length"
})  # fmt: skip
_FORBIDDEN_RESPONSE_HEADERS = frozenset({"Proxy-Authenticate", "Transfer-Encoding", "Via"})
_REMAPPED_RESPONSE_HEADERS = frozenset({"Content-Md5", "Date", "Server", "Www-Authenticate"})
_REMAP_PREFIX = "X-Yf-Remapped-"

# CR and LF become spaces (as Go's net/http writes them); the other control characters except
# TAB are dropped, since the HTTP server refuses to send them.
_VALUE_TABLE: dict[int, str | None] = {c: None for c in [*range(0x20), 0x7F] if c != 0x09}
_VALUE_TABLE |= {0x0A: " ", 0x0D: " "}

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_last_clf: tuple[int, str] = (-1, "")
# Trace ids come from a generator of our own: a function that seeds `random` must not make
# them repeat.
_ids = random.Random()
# The version (4) and variant bits of a random UUID.
_UUID_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_BITS = (0x4000 << 64) | (0x8000 << 48)


class MalformedResponse(Exception):
    """The function's result does not fit the platform's response shape.

    `str(exc)` is the reason, e.g. "statusCode must be an integer, got str".
    """


def _canonical_or_empty(name: str) -> str:
    canonical = _canonical_cache.get(name)
    if canonical is None:
        canonical = ""
        if name and _TOKEN_CHARS.issuperset(name):
            canonical = "-".join(part.capitalize() for part in name.split("-"))
        if len(_canonical_cache) < _CACHE_LIMIT:
            _canonical_cache[name] = canonical
    return canonical


def canonical_header_name(name: str) -> str:
    """Return `name` in canonical MIME form, like Go's textproto.CanonicalMIMEHeaderKey.

    The first letter and every letter after '-' are upper-cased, the rest lower-cased
    ("x-request-id" -> "X-Request-Id"). A name that is not a valid HTTP token (empty, or holding
    a space, ':', a non-ASCII character, ...) is returned unchanged.
    """
    return _canonical_or_empty(name) or name


def _request_name(raw: bytes) -> str:
    name = canonical_header_name(raw.decode("latin-1"))
    if name in _REMOVED_REQUEST_HEADERS or name in _ROUTER_HEADERS:
        name = ""
    if len(_request_name_cache) < _CACHE_LIMIT:
        _request_name_cache[raw] = name
    return name


def _collect_headers(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[dict[str, str], dict[str, list[str]], list[str]]:
    """Single-value and multi-value header maps, plus the incoming X-Forwarded-For values."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    forwarded: list[str] = []
    cached = _request_name_cache.get
    for raw_name, raw_value in headers:
        name = cached(raw_name)
        if name is None:
            name = _request_name(raw_name)
        if not name:
            continue
        # Go passes header bytes through and JSON makes them UTF-8: so does the event here.
        value = raw_value.decode("utf-8", "replace")
        if name == _FORWARDED_FOR:
            forwarded.append(value)
            continue
        single[name] = value
        if name in multi:
            multi[name].append(value)
        else:
            multi[name] = [value]
    return single, multi, forwarded


def _parse_query(query_string: bytes) -> tuple[dict[str, str], dict[str, list[str]]]:
    # Raw non-ASCII bytes are read as UTF-8 (what the cloud's Go gateway passes through).
    pairs = parse_qsl(query_string.decode("utf-8", "replace"), keep_blank_values=True)
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        multi.setdefault(key, []).append(value)
    return dict(pairs), multi


def _event_body(body: bytes, content_type: str | None) -> tuple[str, bool]:
    if not body:  # as below, without the work
        return "", not _is_json(content_type)
    if _is_json(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.partition(";")[0].strip().lower() == "application/json"


def _clf_time(epoch: int) -> str:
    """`epoch` in Common Log Format, UTC: "13/Jul/2022:11:58:59 +0000"."""
    global _last_clf
    if _last_clf[0] != epoch:
        t = time.gmtime(epoch)
        text = (
            f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
        )
        _last_clf = (epoch, text)
    return _last_clf[1]


def build_http_event(
    method: str,
    query_string: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    client: tuple[str, int] | None,
    request_id: str,
    trace_id: str,
    request_time: float,
) -> dict:
    """Build the platform's HTTP-integration event for one request.

    `headers` are the request's (raw bytes, in order, repeats possible); values are decoded as
    UTF-8 (as the cloud's Go router passes them) and names canonicalised; the headers the
    platform strips are left out and the router's own (X-Forwarded-For, X-Real-Remote-Address,
    X-Request-Id, X-Trace-Id) are added. `client` is the peer's (ip, port); when it is None
    (e.g. a Unix socket) the client ip is "" and the port 0. The body is passed as text for a
    valid-UTF-8 `application/json` request, else base64.
    """
    single, multi, forwarded = _collect_headers(headers)
    ip, port = client if client is not None else ("", 0)
    forwarded.append(ip)
    forwarded_for = ", ".join(forwarded)
    remote_address = f"[{ip}]:{port}"
    single[_FORWARDED_FOR] = forwarded_for
    single["X-Real-Remote-Address"] = remote_address
    single["X-Request-Id"] = request_id
    single["X-Trace-Id"] = trace_id
    multi[_FORWARDED_FOR] = [forwarded_for]
    multi["X-Real-Remote-Address"] = [remote_address]
    multi["X-Request-Id"] = [request_id]
    multi["X-Trace-Id"] = [trace_id]
    query, multi_query = _parse_query(query_string) if query_string else ({}, {})
    body_text, is_base64 = _event_body(body, single.get("Content-Type"))
    epoch = int(request_time)
    return {
        "httpMethod": method,
        "headers": single,
        "multiValueHeaders": multi,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "requestContext": {
            "identity": {"sourceIp": ip, "userAgent": single.get("User-Agent", "")},
            "httpMethod": method,
            "requestId": request_id,
            "requestTime": _clf_time(epoch),
            "requestTimeEpoch": epoch,
        },
        "body": body_text,
        "isBase64Encoded": is_base64,
        "params": {},
        "multiValueParams": {},
        "pathParams": {},
        "url": "",
    }


def new_id() -> str:
    """A random (version 4) UUID as text, for trace ids; names, not secrets."""
    text = "%032x" % (_ids.getrandbits(128) & _UUID_MASK | _UUID_BITS)
    return "-".join((text[:8], text[8:12], text[12:16], text[16:20], text[20:]))


def build_raw_event(body: bytes) -> str:
    """The `?integration=raw` event: the body as text (invalid UTF-8 becomes U+FFFD)."""
    return body.decode("utf-8", "replace")


def _type(value: object) -> str:
    return type(value).__name__


def _status_code(value: object) -> int:
    if value is None:
        return 200
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedResponse(f"statusCode must be an integer, got {_type(value)}")
    if not 100 <= value <= 599:
        raise MalformedResponse(f"statusCode must be between 100 and 599, got {value}")
    return int(value)


def _checked_name(name: object, field: str) -> str:
    """The canonical form of a response header name ("" when not a token); raises if forbidden."""
    if not isinstance(name, str):
        raise MalformedResponse(f"{field} key {name!r} must be a string, got {_type(name)}")
    canonical = _canonical_or_empty(name)
    if canonical in _FORBIDDEN_RESPONSE_HEADERS:
        raise MalformedResponse(f"header {canonical!r} is not allowed in a function response")
    return canonical


def _checked_map(value: object, field: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedResponse(f"{field} must be an object (dict), got {_type(value)}")
    return value


def _single_headers(headers: object) -> dict[str, str]:
    """canonical name -> value, for `headers` (a later name wins, like Go's Header.Set)."""
    out: dict[str, str] = {}
    for name, value in _checked_map(headers, "headers").items():
        if value is None:
            continue
        canonical = _checked_name(name, "headers")
        if not isinstance(value, str):
            raise MalformedResponse(f"headers[{name!r}] must be a string, got {_type(value)}")
        out[canonical] = value
    return out


def _multi_headers(headers: object) -> dict[str, list[str]]:
    """canonical name -> values, for `multiValueHeaders` (repeated names accumulate)."""
    out: dict[str, list[str]] = {}
    for name, values in _checked_map(headers, "multiValueHeaders").items():
        if values is None:
            continue
        canonical = _checked_name(name, "multiValueHeaders")
        if not isinstance(values, list | tuple):
            raise MalformedResponse(
                f"multiValueHeaders[{name!r}] must be a list of strings, got {_type(values)}"
            )
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise MalformedResponse(
                    f"multiValueHeaders[{name!r}][{i}] must be a string, got {_type(value)}"
                )
        out.setdefault(canonical, []).extend(values)
    return out


def _wire_name(canonical: str) -> bytes | None:
    if not canonical or canonical in _DROPPED_RESPONSE_HEADERS:
        return None
    if canonical in _REMAPPED_RESPONSE_HEADERS:
        canonical = _REMAP_PREFIX + canonical
    return canonical.encode("latin-1")


def _wire_value(value: str) -> bytes:
    if not value.isprintable():
        value = value.translate(_VALUE_TABLE)
    # Go's net/http trims values on the wire the same way.
    value = value.strip(" \t")
    return value.encode("utf-8", "replace")


def _response_headers(headers: object, multi_headers: object) -> list[tuple[bytes, bytes]]:
    multi = _multi_headers(multi_headers)
    single = _single_headers(headers)
    out: list[tuple[bytes, bytes]] = []
    for canonical, value in single.items():
        wire = _wire_name(canonical)
        if wire is not None and canonical not in multi:
            out.append((wire, _wire_value(value)))
    for canonical, values in multi.items():
        wire = _wire_name(canonical)
        if wire is not None:
            out.extend((wire, _wire_value(value)) for value in values)
    return out


def _response_body(body: object, is_base64: object) -> bytes:
    if is_base64 is not None and not isinstance(is_base64, bool):
        raise MalformedResponse(f"isBase64Encoded must be a boolean, got {_type(is_base64)}")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise MalformedResponse(f"body must be a string, got {_type(body)}")
    if not is_base64:
        return body.encode("utf-8", "replace")
    if "\n" in body or "\r" in body:
        body = body.replace("\r", "").replace("\n", "")  # Go's base64 decoder skips them too
    try:
        return base64.b64decode(body, validate=True)
    except ValueError as exc:
        reason = f"body is not valid base64 (isBase64Encoded is true): {exc}"
        raise MalformedResponse(reason) from None


def map_http_response(result: object) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Map a handler's result to (status, header pairs, body), as the cloud's gateway does.

    Raises MalformedResponse when the result does not fit {statusCode: int, headers: {str: str},
    multiValueHeaders: {str: [str]}, body: str, isBase64Encoded: bool}; a key set to None counts
    as absent. Header names come out canonical, values UTF-8 (as Go writes them), with CR/LF
    turned into spaces and the other control characters but TAB removed.
    """
    if not isinstance(result, dict):
        raise MalformedResponse(f"the result must be an object (dict), got {_type(result)}")
    status = _status_code(result.get("statusCode"))
    headers = _response_headers(result.get("headers"), result.get("multiValueHeaders"))
    body = _response_body(result.get("body"), result.get("isBase64Encoded"))
    return status, headers, body


def map_http_response_lines(result: object) -> tuple[int, bytes, bytes]:
    """map_http_response, with the headers as the header section's lines (`Name: value` CRLF
    each): (status, lines, body). The lines of a `headers` map seen before, without
    multiValueHeaders, come from a cache: a function mostly answers with the same few."""
    if not isinstance(result, dict):
        raise MalformedResponse(f"the result must be an object (dict), got {_type(result)}")
    status = _status_code(result.get("statusCode"))
    lines = _response_lines(result.get("headers"), result.get("multiValueHeaders"))
    body = _response_body(result.get("body"), result.get("isBase64Encoded"))
    return status, lines, body


def _response_lines(headers: object, multi_headers: object) -> bytes:
    key = None
    if multi_headers is None and type(headers) is dict:
        try:
            key = tuple(headers.items())
            lines = _lines_cache.get(key)
        except TypeError:  # an unhashable value: refused below
            key = lines = None
        if lines is not None:
            return lines
    lines = header_lines(_response_headers(headers, multi_headers))
    if key is not None and len(_lines_cache) < _CACHE_LIMIT:
        _lines_cache[key] = lines  # only a map that passed every check gets here
    return lines


def map_raw_response(result: object) -> bytes:
    """The `?integration=raw` response body (status 200) for a handler's result.

    A str is sent as UTF-8, anything else as JSON (None as `null`); raises MalformedResponse
    when the result cannot be JSON-encoded (e.g. bytes).
    """
    if isinstance(result, str):
        return result.encode("utf-8", "replace")
    try:
        return json.dumps(result).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise MalformedResponse(f"the result is not JSON-serializable: {exc}") from None


def build_lambda_event(body: bytes) -> object:
    """The Lambda Invoke API's event: the body as JSON (the supervisor has checked it parses),
    an empty body standing for an empty object."""
    return json.loads(body) if body.strip() else {}


def map_lambda_response(result: object) -> bytes:
    """The Lambda Invoke API's response body: the result as JSON (None as `null`); raises
    MalformedResponse when it cannot be JSON-encoded."""
    try:
        return json.dumps(result).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise MalformedResponse(f"{exc}") from None


def malformed_error(reason: str, result: object) -> dict:
    """The platform's error body for a result that MalformedResponse rejected."""
    try:
        payload = json.dumps(result, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        payload = repr(result)
    return {
        "errorMessage": "Malformed serverless function response: " + reason,
        "errorType": "ProxyIntegrationError",
        "payload": payload,
    }


def header_lines(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Mapped response headers as the header section's lines: `Name: value` CRLF each."""
    return b"".join([name + b": " + value + b"\r\n" for name, value in headers])
