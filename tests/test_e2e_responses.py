"""End to end: how a function's result becomes the HTTP response (router.handler)."""

import base64
import json
from typing import Any

import httpx
import pytest
from e2e_helpers import Supervisor, ok_json

pytestmark = pytest.mark.timeout(30)

MALFORMED_PREFIX = "Malformed serverless function response: "
FROM_FUNCTION = "from-function"


def respond_with(router: Supervisor, result: Any) -> httpx.Response:
    """Make router.handler return `result` (sent as the JSON request body)."""
    return router.request(
        "POST", "/", params={"action": "respond"}, content=json.dumps(result),
        headers={"Content-Type": "application/json"},
    )


def call_raw(router: Supervisor, body: str, content_type: str = "text/plain") -> httpx.Response:
    """POST `body` with ?integration=raw."""
    return router.request(
        "POST", "/", params={"integration": "raw"}, content=body.encode(),
        headers={"Content-Type": content_type},
    )


def assert_proxy_integration_error(response: httpx.Response) -> dict[str, Any]:
    """Check a 502 ProxyIntegrationError response; return its JSON body."""
    assert response.status_code == 502, response.text
    error = response.json()
    assert error["errorType"] == "ProxyIntegrationError"
    assert error["errorMessage"].startswith(MALFORMED_PREFIX)
    assert len(error["errorMessage"]) > len(MALFORMED_PREFIX)
    assert isinstance(error["payload"], str)
    return error


@pytest.mark.parametrize("status", [200, 201, 404, 418])
def test_status_code_is_used(router: Supervisor, status: int) -> None:
    response = respond_with(router, {"statusCode": status, "body": "text"})
    assert response.status_code == status
    assert response.text == "text"


def test_missing_status_code_means_200(router: Supervisor) -> None:
    response = respond_with(router, {"body": "no status"})
    assert response.status_code == 200
    assert response.text == "no status"


def test_success_has_request_id_and_no_function_error(router: Supervisor) -> None:
    response = router.call("echo")
    result = ok_json(response)
    assert response.headers["X-Request-Id"] == result["context"]["request_id"]
    assert response.headers["X-Request-Id"] == result["event"]["requestContext"]["requestId"]
    assert "X-Function-Error" not in response.headers


def test_headers_and_unicode_body_are_returned(router: Supervisor) -> None:
    result = {"headers": {"X-Custom": "value", "Content-Type": "text/plain"}, "body": "привет"}
    response = respond_with(router, result)
    assert response.headers["X-Custom"] == "value"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.content == "привет".encode()


def test_multi_value_headers_give_repeated_headers(router: Supervisor) -> None:
    result = {"multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]}, "body": ""}
    response = respond_with(router, result)
    assert response.status_code == 200
    assert response.headers.get_list("Set-Cookie") == ["a=1", "b=2"]


def test_multi_value_headers_win_over_headers(router: Supervisor) -> None:
    result = {"headers": {"X-Both": "single"}, "multiValueHeaders": {"X-Both": ["m1", "m2"]}}
    response = respond_with(router, result)
    assert response.status_code == 200
    assert response.headers.get_list("X-Both") == ["m1", "m2"]


def test_base64_result_gives_raw_bytes(router: Supervisor) -> None:
    payload = bytes(range(256))
    result = {
        "statusCode": 200,
        "headers": {"Content-Type": "application/octet-stream"},
        "isBase64Encoded": True,
        "body": base64.b64encode(payload).decode(),
    }
    response = respond_with(router, result)
    assert response.status_code == 200
    assert response.content == payload


@pytest.mark.parametrize("name", ["Date", "Server", "Content-Md5", "Www-Authenticate"])
def test_reserved_response_headers_are_renamed(router: Supervisor, name: str) -> None:
    response = respond_with(router, {"headers": {name: FROM_FUNCTION}, "body": ""})
    assert response.status_code == 200
    assert response.headers[f"X-Yf-Remapped-{name}"] == FROM_FUNCTION
    assert FROM_FUNCTION not in response.headers.get_list(name)


@pytest.mark.parametrize(
    "name", ["Host", "Authorization", "User-Agent", "Connection", "Max-Forwards", "Cookie"]
)
def test_dropped_response_headers_do_not_reach_the_client(router: Supervisor, name: str) -> None:
    response = respond_with(router, {"headers": {name: FROM_FUNCTION}, "body": "kept"})
    assert response.status_code == 200
    assert response.text == "kept"
    assert FROM_FUNCTION not in response.headers.get_list(name)


@pytest.mark.parametrize("name", ["Via", "Proxy-Authenticate", "Transfer-Encoding"])
def test_forbidden_response_headers_fail_the_call(router: Supervisor, name: str) -> None:
    response = respond_with(router, {"headers": {name: FROM_FUNCTION}, "body": "x"})
    assert response.status_code == 502
    assert FROM_FUNCTION not in response.headers.get_list(name)


@pytest.mark.parametrize(
    "result",
    [
        [1, 2],
        "a string",
        {"statusCode": "200", "body": "x"},
        {"statusCode": 200, "body": {"a": 1}},
        {"body": 5},
        {"statusCode": 200, "isBase64Encoded": True, "body": "abcde"},
    ],
    ids=["list", "str", "status-str", "body-dict", "body-int", "bad-base64"],
)
def test_malformed_result_gives_proxy_integration_error(router: Supervisor, result: Any) -> None:
    response = respond_with(router, result)
    error = assert_proxy_integration_error(response)
    assert json.loads(error["payload"]) == result
    assert response.headers["X-Request-Id"]


def test_unserializable_result_gives_proxy_integration_error(router: Supervisor) -> None:
    assert_proxy_integration_error(router.call("unserializable"))


def test_raw_integration_passes_the_body_as_str(router: Supervisor) -> None:
    body = "plain body ü {not json"
    response = call_raw(router, body)
    assert ok_json(response) == {"raw_event": body}
    assert response.headers["X-Request-Id"]


def test_raw_integration_does_not_parse_json_bodies(router: Supervisor) -> None:
    body = '{"a": 1}'
    assert ok_json(call_raw(router, body, "application/json")) == {"raw_event": body}


def test_raw_integration_returns_a_str_result_as_is(router: Supervisor) -> None:
    response = call_raw(router, 'return:"just text"')
    assert response.status_code == 200
    assert response.content == b"just text"


@pytest.mark.parametrize(
    "result",
    [{"statusCode": 404, "body": "nope"}, [1, "two"], 42, None],
    ids=["proxy-like-dict", "list", "int", "none"],
)
def test_raw_integration_json_encodes_other_results(router: Supervisor, result: Any) -> None:
    response = call_raw(router, "return:" + json.dumps(result))
    assert ok_json(response) == result
