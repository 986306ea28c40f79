"""functions-framework's default peer: an HTTP target for its Flask server (gunicorn gthread).

Loaded by `functions-framework --source benchmarks/peers/ff_flask.py --target handle`.
"""

from __future__ import annotations

import flask

from benchmarks.peers import adapter

HANDLER = adapter.load_handler()


def handle(request: flask.Request) -> flask.Response:
    """The functions-framework target."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    event = adapter.build_event(request.method, headers, request.args.to_dict(),
                                request.get_data())
    status, response_headers, payload = adapter.to_response(adapter.call_blocking(HANDLER, event))
    return flask.Response(payload, status=status, headers=response_headers)
