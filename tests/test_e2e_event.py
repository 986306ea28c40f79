"""End to end: the event and context a function receives (the seed's example function)."""

import base64
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from e2e_helpers import Launch, RawExchange, Supervisor, ok_json, only_runtime_line

pytestmark = pytest.mark.timeout(30)

TIMEOUT_S = 4
TOKEN = {"access_token": "json-token", "expires_in": 3600, "token_type": "Bearer"}
SEED_OPTIONS = (
    "--instances", "1",
    "--timeout", str(TIMEOUT_S),
    "--memory", "256",
    "--function-name", "fn-e2e",
    "--function-version", "ver-e2e",
    "--token", json.dumps(TOKEN),
    "--log-format", "json",
)
SEED_REQUEST_HEADERS = [
    ("Accept", "*/*"),
    ("Content-Type", "application/json"),
    ("User-Agent", "curl/7.64.1"),
]
SEED_BODY = '{"hello": "world"}'
UUID_SHAPE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
REMOVED_REQUEST_HEADERS = {
    "Authorization": "Bearer secret",
    "Cookie": "session=secret",
    "Proxy-Authenticate": "Basic",
    "Content-Md5": "Q2hlY2sgSW50ZWdyaXR5IQ==",
    "Max-Forwards": "5",
    "Server": "client-side",
    "Www-Authenticate": "Basic",
    "Trailer": "X-Checksum",
    "Te": "trailers",
}
NEVER_FORWARDED = {
    "Expect", "Te", "Trailer", "Upgrade", "Proxy-Authenticate", "Authorization", "Connection",
    "Content-Md5", "Max-Forwards", "Server", "Transfer-Encoding", "Www-Authenticate", "Cookie",
}

# The result shown on the seed page for `curl --data '{"hello": "world"}' ...?param=one`.
SEED_RESULT: dict[str, Any] = {
    "context": {
        "aws_request_id": "6e8356f9-489b-4c7b-8ba6-c8cd********",
        "deadline_ms": 1657713543198,
        "function_name": "d4eo2faf62**********",
        "function_version": "d4e3vrugh3**********",
        "invoked_function_arn": "d4eo2faf62**********",
        "log_group_name": "ckgjmanjlh**********",
        "log_stream_name": "d4e3vrugh3**********",
        "memory_limit_in_mb": 128,
        "request_id": "6e8356f9-489b-4c7b-8ba6-c8cd********",
        "token": {"access_token": "<IAM_token>", "expires_in": 42299, "token_type": "Bearer"},
    },
    "event": {
        "body": '{"hello": "world"}',
        "headers": {
            "Accept": "*/*",
            "Content-Length": "18",
            "Content-Type": "application/json",
            "Host": "{{ sf-url }}",
            "User-Agent": "curl/7.64.1",
            "X-Forwarded-For": "109.252.148.209",
            "X-Real-Remote-Address": "[109.252.148.209]:2816",
            "X-Request-Id": "6e8356f9-489b-4c7b-8ba6-c8cd********",
            "X-Trace-Id": "e9fe9b05-c1aa-4fb8-94d8-a514********",
        },
        "httpMethod": "POST",
        "isBase64Encoded": False,
        "multiValueHeaders": {
            "Accept": ["*/*"],
            "Content-Length": ["18"],
            "Content-Type": ["application/json"],
            "Host": ["{{ sf-url }}"],
            "User-Agent": ["curl/7.64.1"],
            "X-Forwarded-For": ["109.252.148.209"],
            "X-Real-Remote-Address": ["[109.252.148.209]:2816"],
            "X-Request-Id": ["6e8356f9-489b-4c7b-8ba6-c8cd********"],
            "X-Trace-Id": ["e9fe9b05-c1aa-4fb8-94d8-a514********"],
        },
        "multiValueParams": {},
        "multiValueQueryStringParameters": {"param": ["one"]},
        "params": {},
        "pathParams": {},
        "queryStringParameters": {"param": "one"},
        "requestContext": {
            "httpMethod": "POST",
            "identity": {"sourceIp": "109.252.148.209", "userAgent": "curl/7.64.1"},
            "requestId": "6e8356f9-489b-4c7b-8ba6-c8cd********",
            "requestTime": "13/Jul/2022:11:58:59 +0000",
            "requestTimeEpoch": 1657713539,
        },
        "url": "",
    },
}


@dataclass(frozen=True)
class SeedCall:
    """The seed's example request as sent to the seed function, and what came back."""

    exchange: RawExchange
    result: dict[str, Any]
    sent_after_ms: float
    answered_before_ms: float

    @property
    def event(self) -> dict[str, Any]:
        """The event the function received."""
        return self.result["event"]

    @property
    def context(self) -> dict[str, Any]:
        """The context the function received, as json.dumps(context, default=vars) shows it."""
        return self.result["context"]


@pytest.fixture(scope="module")
def seed_server(launch_module_supervisor: Launch) -> Supervisor:
    """The seed's example function, verbatim, with explicit context options."""
    return launch_module_supervisor("seed_example.handler", *SEED_OPTIONS)


@pytest.fixture(scope="module")
def seed_call(seed_server: Supervisor) -> SeedCall:
    """The seed's curl example, sent with exactly the seed's request headers."""
    sent_after_ms = time.time() * 1000
    exchange = seed_server.raw_request(
        "POST", "/?param=one", SEED_REQUEST_HEADERS, SEED_BODY.encode()
    )
    answered_before_ms = time.time() * 1000
    assert exchange.status == 200, exchange.body
    return SeedCall(exchange, json.loads(exchange.body), sent_after_ms, answered_before_ms)


def echoed_event(response) -> dict[str, Any]:
    """The event echoed back by the seed function."""
    return ok_json(response)["event"]


def value_at(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value reached by following `path` from `tree`."""
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.parametrize(
    "path",
    [
        (),
        ("event",),
        ("event", "headers"),
        ("event", "multiValueHeaders"),
        ("event", "requestContext"),
        ("event", "requestContext", "identity"),
        ("event", "queryStringParameters"),
        ("event", "multiValueQueryStringParameters"),
        ("context",),
        ("context", "token"),
    ],
    ids=lambda path: ".".join(path) or "result",
)
def test_key_sets_match_the_seed_example(seed_call: SeedCall, path: tuple[str, ...]) -> None:
    assert set(value_at(seed_call.result, path)) == set(value_at(SEED_RESULT, path))


def test_event_values_match_the_request(seed_call: SeedCall) -> None:
    event = seed_call.event
    assert event["httpMethod"] == "POST"
    assert event["body"] == SEED_BODY
    assert event["isBase64Encoded"] is False
    assert event["queryStringParameters"] == {"param": "one"}
    assert event["multiValueQueryStringParameters"] == {"param": ["one"]}
    assert (event["params"], event["multiValueParams"], event["pathParams"]) == ({}, {}, {})
    assert event["url"] == ""


def test_headers_carry_request_and_router_values(
    seed_call: SeedCall, seed_server: Supervisor
) -> None:
    headers = seed_call.event["headers"]
    assert headers["Accept"] == "*/*"
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == str(len(SEED_BODY))
    assert headers["Host"] == f"127.0.0.1:{seed_server.port}"
    assert headers["User-Agent"] == "curl/7.64.1"
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Real-Remote-Address"] == f"[127.0.0.1]:{seed_call.exchange.client_port}"
    assert isinstance(headers["X-Trace-Id"], str) and headers["X-Trace-Id"]


def test_multi_value_headers_hold_each_header_as_a_list(seed_call: SeedCall) -> None:
    headers = seed_call.event["headers"]
    expected = {name: [value] for name, value in headers.items()}
    assert seed_call.event["multiValueHeaders"] == expected


def test_request_id_is_the_same_everywhere(seed_call: SeedCall) -> None:
    request_id = seed_call.exchange.headers["X-Request-Id"]
    assert UUID_SHAPE.fullmatch(request_id), request_id
    assert seed_call.event["requestContext"]["requestId"] == request_id
    assert seed_call.event["headers"]["X-Request-Id"] == request_id
    assert seed_call.context["request_id"] == request_id
    assert seed_call.context["aws_request_id"] == request_id


def test_request_context_describes_the_call(seed_call: SeedCall) -> None:
    request_context = seed_call.event["requestContext"]
    assert request_context["httpMethod"] == "POST"
    assert request_context["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "curl/7.64.1"}
    epoch = request_context["requestTimeEpoch"]
    assert type(epoch) is int
    assert seed_call.sent_after_ms / 1000 - 2 <= epoch <= seed_call.answered_before_ms / 1000 + 1
    request_time = datetime.strptime(request_context["requestTime"], "%d/%b/%Y:%H:%M:%S %z")
    assert abs(request_time.timestamp() - epoch) <= 1


def test_context_shows_the_command_line_options(seed_call: SeedCall) -> None:
    context = seed_call.context
    assert context["function_name"] == "fn-e2e"
    assert context["function_version"] == "ver-e2e"
    assert context["memory_limit_in_mb"] == 256
    assert context["token"] == TOKEN
    for name in ("invoked_function_arn", "log_group_name", "log_stream_name"):
        assert isinstance(context[name], str), name


def test_deadline_is_about_the_timeout_ahead(seed_call: SeedCall) -> None:
    deadline_ms = seed_call.context["deadline_ms"]
    assert type(deadline_ms) is int
    assert deadline_ms > seed_call.answered_before_ms
    assert deadline_ms >= seed_call.sent_after_ms + TIMEOUT_S * 1000 - 1000
    assert deadline_ms <= seed_call.answered_before_ms + TIMEOUT_S * 1000 + 250


def test_start_line_names_the_function_version(
    seed_call: SeedCall, seed_server: Supervisor
) -> None:
    request_id = seed_call.exchange.headers["X-Request-Id"]
    records = seed_server.wait_for_reports([request_id])
    _, start = only_runtime_line(records, "START", request_id)
    assert start["message"] == f"START RequestID: {request_id} Version: ver-e2e"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_http_method_reaches_the_event(seed_server: Supervisor, method: str) -> None:
    event = echoed_event(seed_server.request(method, "/"))
    assert event["httpMethod"] == method
    assert event["requestContext"]["httpMethod"] == method


def test_removed_request_headers_do_not_reach_the_function(seed_server: Supervisor) -> None:
    headers = {**REMOVED_REQUEST_HEADERS, "X-Kept": "kept"}
    event = echoed_event(seed_server.request("GET", "/", headers=headers))
    assert event["headers"]["X-Kept"] == "kept"
    for received in (event["headers"], event["multiValueHeaders"]):
        assert not {name.title() for name in received} & NEVER_FORWARDED


def test_header_names_arrive_in_canonical_form(seed_server: Supervisor) -> None:
    event = echoed_event(seed_server.request("GET", "/", headers={"x-lower-case-name": "v"}))
    assert event["headers"]["X-Lower-Case-Name"] == "v"
    assert event["multiValueHeaders"]["X-Lower-Case-Name"] == ["v"]


def test_repeated_request_headers_keep_all_values(seed_server: Supervisor) -> None:
    headers = [("X-Multi", "one"), ("X-Multi", "two")]
    event = echoed_event(seed_server.request("GET", "/", headers=headers))
    assert event["headers"]["X-Multi"] == "two"
    assert event["multiValueHeaders"]["X-Multi"] == ["one", "two"]


def test_repeated_query_keys_keep_all_values(seed_server: Supervisor) -> None:
    params = [("a", "1"), ("a", "2"), ("b", "3")]
    event = echoed_event(seed_server.request("GET", "/", params=params))
    assert event["queryStringParameters"] == {"a": "2", "b": "3"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["3"]}


def test_forwarded_for_chain_gets_the_client_appended(seed_server: Supervisor) -> None:
    headers = {"X-Forwarded-For": "10.1.2.3, 10.4.5.6"}
    event = echoed_event(seed_server.request("GET", "/", headers=headers))
    chain = [address.strip() for address in event["headers"]["X-Forwarded-For"].split(",")]
    assert chain == ["10.1.2.3", "10.4.5.6", "127.0.0.1"]
    assert event["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"
    assert event["headers"]["X-Real-Remote-Address"].startswith("[127.0.0.1]:")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"hello, world!", "application/x-www-form-urlencoded"),
        (b"plain text", "text/plain"),
        (bytes(range(256)), "application/octet-stream"),
    ],
    ids=["form", "text", "binary"],
)
def test_non_json_body_arrives_base64_encoded(
    seed_server: Supervisor, body: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type}
    response = seed_server.request("POST", "/", content=body, headers=headers)
    event = echoed_event(response)
    assert event["isBase64Encoded"] is True
    assert event["body"] == base64.b64encode(body).decode()


def test_json_body_arrives_as_sent(seed_server: Supervisor) -> None:
    body = '{"text": "привет", "n": [1, 2]}'
    response = seed_server.request(
        "POST", "/", content=body.encode(), headers={"Content-Type": "application/json"}
    )
    event = echoed_event(response)
    assert event["isBase64Encoded"] is False
    assert event["body"] == body

