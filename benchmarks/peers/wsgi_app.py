"""gunicorn's peer: a WSGI app for its pre-fork pool of sync workers (one call per worker)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from benchmarks.peers import adapter

HANDLER = adapter.load_handler()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI entry point."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    headers = {name[5:].replace("_", "-").lower(): value
               for name, value in environ.items() if name.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    event = adapter.build_event(environ["REQUEST_METHOD"], headers, query, body)
    status, response_headers, payload = adapter.to_response(adapter.call_blocking(HANDLER, event))
    response_headers.append(("Content-Length", str(len(payload))))
    start_response(f"{status} {HTTPStatus(status).phrase}", response_headers)
    return [payload]
