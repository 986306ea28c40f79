"""Unit tests for worker.events: request -> event and result -> response mapping."""

import base64
import calendar
import enum
import json
import uuid
from http import HTTPStatus

import pytest

from worker import events
from worker.events import (
    MalformedResponse,
    build_http_event,
    build_raw_event,
    canonical_header_name,
    malformed_error,
    map_http_response,
    map_raw_response,
)

pytestmark = pytest.mark.timeout(10)

SEED_TIME = 1657713539.25  # 13/Jul/2022:11:58:59 +0000, the seed's example
REQUEST_ID = "6e8356f9-489b-4c7b-8ba6-c8cd12345678"
TRACE_ID = "e9fe9b05-c1aa-4fb8-94d8-a51412345678"
CLIENT = ("109.252.148.209", 2816)


def event(
    headers=(),
    *,
    method="POST",
    query=b"",
    body=b"",
    client=CLIENT,
    request_time=SEED_TIME,
):
    return build_http_event(
        method, query, list(headers), body, client, REQUEST_ID, TRACE_ID, request_time
    )


def response_headers(result):
    return map_http_response(result)[1]


def malformed(result):
    with pytest.raises(MalformedResponse) as info:
        map_http_response(result)
    return str(info.value)


# --- canonical_header_name ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("content-type", "Content-Type"),
        ("x-request-id", "X-Request-Id"),
        ("WWW-AUTHENTICATE", "Www-Authenticate"),
        ("Content-Type", "Content-Type"),
        ("cOnTeNt-tYpE", "Content-Type"),
        ("host", "Host"),
        ("te", "Te"),
        ("content-md5", "Content-Md5"),
        ("x--y", "X--Y"),
        ("-x-", "-X-"),
        ("1abc-2def", "1abc-2def"),
        ("a_b-c.d", "A_b-C.d"),
        ("x-!#$%&'*+.^_`|~", "X-!#$%&'*+.^_`|~"),
    ],
)
def test_canonical_header_name(name, expected):
    assert canonical_header_name(name) == expected


@pytest.mark.parametrize(
    "name",
    ["", "bad name", "x:y", "x\r\ny", "x\ty", "naïve-header", "x(y)", "x/y", "x\x00", " host"],
)
def test_canonical_header_name_leaves_invalid_names_unchanged(name):
    assert canonical_header_name(name) == name


def test_canonical_header_name_is_cached(monkeypatch):
    monkeypatch.setattr(events, "_canonical_cache", {})
    assert canonical_header_name("x-cached") == "X-Cached"
    assert events._canonical_cache["x-cached"] == "X-Cached"
    assert canonical_header_name("x-cached") == "X-Cached"


def test_canonical_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(events, "_canonical_cache", {})
    for i in range(3000):
        assert canonical_header_name(f"x-name-{i}") == f"X-Name-{i}"
    assert len(events._canonical_cache) <= 1024
    assert canonical_header_name("x-name-2999") == "X-Name-2999"


def test_invalid_name_cached_stays_unchanged(monkeypatch):
    monkeypatch.setattr(events, "_canonical_cache", {})
    assert canonical_header_name("bad name") == "bad name"
    assert canonical_header_name("bad name") == "bad name"


def test_request_name_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(events, "_request_name_cache", {})
    headers = [(f"x-h-{i}".encode(), b"v") for i in range(3000)]
    result = event(headers)
    assert len(events._request_name_cache) <= 1024
    assert result["headers"]["X-H-2999"] == "v"
    assert len(result["headers"]) == 3000 + 4


# --- build_http_event: the seed's example ---------------------------------------------------


def test_seed_example_event():
    host = "functions.yandexcloud.net"
    headers = [
        (b"host", host.encode()),
        (b"user-agent", b"curl/7.64.1"),
        (b"accept", b"*/*"),
        (b"content-length", b"18"),
        (b"content-type", b"application/json"),
    ]
    result = event(headers, query=b"param=one", body=b'{"hello": "world"}')
    single = {
        "Accept": "*/*",
        "Content-Length": "18",
        "Content-Type": "application/json",
        "Host": host,
        "User-Agent": "curl/7.64.1",
        "X-Forwarded-For": "109.252.148.209",
        "X-Real-Remote-Address": "[109.252.148.209]:2816",
        "X-Request-Id": REQUEST_ID,
        "X-Trace-Id": TRACE_ID,
    }
    assert result == {
        "body": '{"hello": "world"}',
        "headers": single,
        "httpMethod": "POST",
        "isBase64Encoded": False,
        "multiValueHeaders": {name: [value] for name, value in single.items()},
        "multiValueParams": {},
        "multiValueQueryStringParameters": {"param": ["one"]},
        "params": {},
        "pathParams": {},
        "queryStringParameters": {"param": "one"},
        "requestContext": {
            "httpMethod": "POST",
            "identity": {"sourceIp": "109.252.148.209", "userAgent": "curl/7.64.1"},
            "requestId": REQUEST_ID,
            "requestTime": "13/Jul/2022:11:58:59 +0000",
            "requestTimeEpoch": 1657713539,
        },
        "url": "",
    }
    # The event must survive the trip to the worker as JSON-compatible data.
    assert json.loads(json.dumps(result)) == result


def test_events_share_no_mutable_state():
    first = event([(b"accept", b"*/*")])
    for value in first.values():
        if isinstance(value, dict):
            value["polluted"] = "yes"
    second = event([(b"accept", b"*/*")])
    assert "polluted" not in json.dumps(second)


def test_input_headers_are_not_modified():
    headers = [(b"x-forwarded-for", b"1.1.1.1"), (b"cookie", b"a=b")]
    snapshot = list(headers)
    build_http_event("GET", b"", headers, b"", CLIENT, "r", "t", SEED_TIME)
    assert headers == snapshot


def test_method_appears_in_event_and_request_context():
    result = event(method="DELETE")
    assert result["httpMethod"] == "DELETE"
    assert result["requestContext"]["httpMethod"] == "DELETE"


# --- build_http_event: headers --------------------------------------------------------------


def test_header_names_are_canonicalised():
    result = event([(b"x-custom-thing", b"1"), (b"X-OTHER", b"2"), (b"accept-encoding", b"gz")])
    assert result["headers"]["X-Custom-Thing"] == "1"
    assert result["headers"]["X-Other"] == "2"
    assert result["multiValueHeaders"]["Accept-Encoding"] == ["gz"]


def test_header_values_are_decoded_utf8_with_replacement():
    result = event([(b"x-name", b"caf\xe9"), (b"x-utf8", "é".encode())])
    assert result["headers"]["X-Name"] == "caf\ufffd"
    assert result["headers"]["X-Utf8"] == "é"


def test_repeated_headers_last_wins_and_multi_keeps_all_in_order():
    headers = [(b"accept", b"a"), (b"x-other", b"o"), (b"accept", b"b"), (b"accept", b"c")]
    result = event(headers)
    assert result["headers"]["Accept"] == "c"
    assert result["multiValueHeaders"]["Accept"] == ["a", "b", "c"]
    assert result["multiValueHeaders"]["X-Other"] == ["o"]


def test_differently_cased_repeats_merge():
    result = event([(b"x-a", b"1"), (b"X-A", b"2")])
    assert result["multiValueHeaders"]["X-A"] == ["1", "2"]


def test_empty_header_value_is_kept():
    result = event([(b"x-empty", b"")])
    assert result["headers"]["X-Empty"] == ""
    assert result["multiValueHeaders"]["X-Empty"] == [""]


REMOVED_REQUEST_HEADERS = [
    "Expect", "Te", "Trailer", "Upgrade", "Proxy-Authenticate", "Authorization", "Connection",
    "Content-Md5", "Max-Forwards", "Server", "Transfer-Encoding", "Www-Authenticate", "Cookie",
]  # fmt: skip


@pytest.mark.parametrize("name", REMOVED_REQUEST_HEADERS)
@pytest.mark.parametrize("spelling", [str.lower, str.upper, str])
def test_removed_request_headers_never_reach_the_event(name, spelling):
    result = event([(spelling(name).encode(), b"secret"), (b"accept", b"*/*")])
    assert name not in result["headers"]
    assert name not in result["multiValueHeaders"]
    assert "secret" not in json.dumps(result)
    assert result["headers"]["Accept"] == "*/*"


def test_host_and_content_length_are_kept():
    result = event([(b"host", b"example.com"), (b"content-length", b"0")])
    assert result["headers"]["Host"] == "example.com"
    assert result["headers"]["Content-Length"] == "0"


def test_router_headers_present_without_client_headers():
    result = event()
    assert result["headers"] == {
        "X-Forwarded-For": "109.252.148.209",
        "X-Real-Remote-Address": "[109.252.148.209]:2816",
        "X-Request-Id": REQUEST_ID,
        "X-Trace-Id": TRACE_ID,
    }
    assert result["multiValueHeaders"] == {k: [v] for k, v in result["headers"].items()}


@pytest.mark.parametrize(
    ("incoming", "expected"),
    [
        ([b"1.1.1.1"], "1.1.1.1, 109.252.148.209"),
        ([b"1.1.1.1, 2.2.2.2"], "1.1.1.1, 2.2.2.2, 109.252.148.209"),
        ([b"1.1.1.1", b"2.2.2.2, 3.3.3.3"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 109.252.148.209"),
        ([b"1.1.1.1,2.2.2.2"], "1.1.1.1,2.2.2.2, 109.252.148.209"),
    ],
)
def test_x_forwarded_for_appends_client_ip(incoming, expected):
    result = event([(b"x-forwarded-for", value) for value in incoming])
    assert result["headers"]["X-Forwarded-For"] == expected
    assert result["multiValueHeaders"]["X-Forwarded-For"] == [expected]


def test_x_forwarded_for_any_case_is_recognised():
    result = event([(b"X-Forwarded-FOR", b"1.1.1.1")])
    assert result["headers"]["X-Forwarded-For"] == "1.1.1.1, 109.252.148.209"


def test_router_headers_replace_client_values():
    headers = [
        (b"x-request-id", b"forged-request"),
        (b"x-trace-id", b"forged-trace"),
        (b"x-real-remote-address", b"[6.6.6.6]:66"),
        (b"X-Request-ID", b"forged-again"),
    ]
    result = event(headers)
    assert result["headers"]["X-Request-Id"] == REQUEST_ID
    assert result["headers"]["X-Trace-Id"] == TRACE_ID
    assert result["headers"]["X-Real-Remote-Address"] == "[109.252.148.209]:2816"
    assert result["multiValueHeaders"]["X-Request-Id"] == [REQUEST_ID]
    assert result["multiValueHeaders"]["X-Trace-Id"] == [TRACE_ID]
    assert result["multiValueHeaders"]["X-Real-Remote-Address"] == ["[109.252.148.209]:2816"]
    assert "forged" not in json.dumps(result)


def test_request_id_header_matches_request_context():
    result = event()
    assert result["headers"]["X-Request-Id"] == result["requestContext"]["requestId"]


def test_ipv6_client():
    result = event(client=("::1", 51000))
    assert result["headers"]["X-Real-Remote-Address"] == "[::1]:51000"
    assert result["headers"]["X-Forwarded-For"] == "::1"
    assert result["requestContext"]["identity"]["sourceIp"] == "::1"


def test_client_given_as_list():
    result = event(client=["10.0.0.1", 80])
    assert result["headers"]["X-Real-Remote-Address"] == "[10.0.0.1]:80"


def test_no_client_means_empty_ip_and_port_zero():
    result = event(client=None)
    assert result["requestContext"]["identity"]["sourceIp"] == ""
    assert result["headers"]["X-Real-Remote-Address"] == "[]:0"
    assert result["headers"]["X-Forwarded-For"] == ""


def test_no_client_with_forwarded_chain():
    result = event([(b"x-forwarded-for", b"1.1.1.1")], client=None)
    assert result["headers"]["X-Forwarded-For"] == "1.1.1.1, "


# --- build_http_event: query string ---------------------------------------------------------


def test_empty_query():
    result = event(query=b"")
    assert result["queryStringParameters"] == {}
    assert result["multiValueQueryStringParameters"] == {}


@pytest.mark.parametrize(
    ("query", "single", "multi"),
    [
        (b"param=one", {"param": "one"}, {"param": ["one"]}),
        (b"a=1&b=2&a=3", {"a": "3", "b": "2"}, {"a": ["1", "3"], "b": ["2"]}),
        (b"flag", {"flag": ""}, {"flag": [""]}),
        (b"flag=&x=1", {"flag": "", "x": "1"}, {"flag": [""], "x": ["1"]}),
        (b"a=b=c", {"a": "b=c"}, {"a": ["b=c"]}),
        (b"q=hello+world", {"q": "hello world"}, {"q": ["hello world"]}),
        (b"q=a%2Bb%26c", {"q": "a+b&c"}, {"q": ["a+b&c"]}),
        (b"%D0%BF%D1%80=%D0%B8", {"пр": "и"}, {"пр": ["и"]}),
        (b"&&a=1&&", {"a": "1"}, {"a": ["1"]}),
        (b"a=1;b=2", {"a": "1;b=2"}, {"a": ["1;b=2"]}),
        (b"=x", {"": "x"}, {"": ["x"]}),
    ],
)
def test_query_parameters(query, single, multi):
    result = event(query=query)
    assert result["queryStringParameters"] == single
    assert result["multiValueQueryStringParameters"] == multi


def test_query_invalid_percent_utf8_is_replaced():
    assert event(query=b"q=%FF")["queryStringParameters"] == {"q": "\ufffd"}


def test_query_raw_utf8_bytes_are_read_as_utf8():
    assert event(query="q=é".encode())["queryStringParameters"] == {"q": "é"}


# --- build_http_event: body -----------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"Application/JSON",
        b"APPLICATION/JSON;charset=UTF-8",
        b" application/json ; foo=bar",
    ],
)
def test_json_body_is_passed_as_text(content_type):
    body = '{"greeting": "привет"}'.encode()
    result = event([(b"content-type", content_type)], body=body)
    assert result["body"] == '{"greeting": "привет"}'
    assert result["isBase64Encoded"] is False


def test_json_content_type_does_not_require_valid_json():
    result = event([(b"content-type", b"application/json")], body=b"not json {")
    assert result["body"] == "not json {"
    assert result["isBase64Encoded"] is False


def test_json_body_that_is_not_utf8_is_base64():
    body = b'{"a": "\xff\xfe"}'
    result = event([(b"content-type", b"application/json")], body=body)
    assert result["body"] == base64.b64encode(body).decode()
    assert result["isBase64Encoded"] is True


def test_docs_form_example_is_base64():
    headers = [(b"content-type", b"application/x-www-form-urlencoded")]
    result = event(headers, body=b"hello, world!")
    assert result["body"] == "aGVsbG8sIHdvcmxkIQ=="
    assert result["isBase64Encoded"] is True


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-type", b"text/plain")],
        [(b"content-type", b"application/jsonx")],
        [(b"content-type", b"application/json-patch+json")],
        [(b"content-type", b"application/vnd.api+json")],
        [(b"content-type", b"")],
        [(b"x-content-type", b"application/json")],
    ],
)
def test_non_json_body_is_base64(headers):
    body = b"\x00\x01binary\xff"
    result = event(headers, body=body)
    assert base64.b64decode(result["body"]) == body
    assert result["isBase64Encoded"] is True


def test_empty_body_without_json_content_type_is_empty_base64():
    result = event(body=b"")
    assert result["body"] == ""
    assert result["isBase64Encoded"] is True


def test_empty_body_with_json_content_type_is_empty_text():
    result = event([(b"content-type", b"application/json")], body=b"")
    assert result["body"] == ""
    assert result["isBase64Encoded"] is False


def test_last_content_type_decides_like_the_headers_map():
    headers = [(b"content-type", b"text/plain"), (b"content-type", b"application/json")]
    assert event(headers, body=b"{}")["isBase64Encoded"] is False
    assert event(list(reversed(headers)), body=b"{}")["isBase64Encoded"] is True


# --- build_http_event: requestContext -------------------------------------------------------


def test_user_agent_last_value():
    headers = [(b"user-agent", b"first"), (b"user-agent", b"second")]
    assert event(headers)["requestContext"]["identity"]["userAgent"] == "second"


def test_user_agent_absent_is_empty():
    assert event()["requestContext"]["identity"]["userAgent"] == ""


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (0.0, "01/Jan/1970:00:00:00 +0000"),
        (0.999, "01/Jan/1970:00:00:00 +0000"),
        (SEED_TIME, "13/Jul/2022:11:58:59 +0000"),
        (calendar.timegm((2024, 2, 29, 23, 59, 59)), "29/Feb/2024:23:59:59 +0000"),
        (calendar.timegm((2030, 12, 31, 0, 0, 0)) + 0.5, "31/Dec/2030:00:00:00 +0000"),
    ],
)
def test_request_time_clf(when, expected):
    context = event(request_time=when)["requestContext"]
    assert context["requestTime"] == expected
    assert context["requestTimeEpoch"] == int(when)
    assert type(context["requestTimeEpoch"]) is int


@pytest.mark.parametrize("month", range(1, 13))
def test_request_time_uses_english_month_names(month):
    names = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    when = calendar.timegm((2023, month, 5, 6, 7, 8))
    expected = f"05/{names[month - 1]}/2023:06:07:08 +0000"
    assert event(request_time=when)["requestContext"]["requestTime"] == expected


def test_request_time_changes_with_each_second():
    times = [SEED_TIME, SEED_TIME + 1, SEED_TIME, SEED_TIME + 0.5]
    got = [event(request_time=t)["requestContext"]["requestTime"] for t in times]
    assert got == [
        "13/Jul/2022:11:58:59 +0000",
        "13/Jul/2022:11:59:00 +0000",
        "13/Jul/2022:11:58:59 +0000",
        "13/Jul/2022:11:58:59 +0000",
    ]


# --- build_raw_event ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", ""),
        (b'{"a": 1}', '{"a": 1}'),
        ("привет".encode(), "привет"),
        (b"ok\xffok", "ok\ufffdok"),
    ],
)
def test_build_raw_event(body, expected):
    assert build_raw_event(body) == expected


# --- map_http_response: shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "type_name"),
    [([], "list"), ("text", "str"), (None, "NoneType"), (200, "int"), (b"x", "bytes")],
)
def test_result_must_be_a_dict(result, type_name):
    assert malformed(result) == f"the result must be an object (dict), got {type_name}"


def test_empty_dict_is_200_with_empty_body():
    assert map_http_response({}) == (200, [], b"")


def test_docs_debugging_function_shape():
    assert map_http_response({"body": "hi"}) == (200, [], b"hi")


def test_unknown_keys_are_ignored():
    result = {"statusCode": 201, "body": "x", "extra": [1, 2], "StatusCode": "junk", 5: None}
    assert map_http_response(result) == (201, [], b"x")


def test_none_values_count_as_absent():
    result = {"statusCode": None, "headers": None, "multiValueHeaders": None, "body": None,
              "isBase64Encoded": None}  # fmt: skip
    assert map_http_response(result) == (200, [], b"")


def test_malformed_response_is_an_exception_with_reason():
    error = MalformedResponse("statusCode must be an integer, got str")
    assert isinstance(error, Exception)
    assert str(error) == "statusCode must be an integer, got str"


# --- map_http_response: statusCode ----------------------------------------------------------


@pytest.mark.parametrize("code", [100, 200, 201, 204, 302, 404, 418, 500, 599])
def test_status_code_accepted(code):
    assert map_http_response({"statusCode": code})[0] == code


def test_status_code_int_enum_is_accepted_as_plain_int():
    status = map_http_response({"statusCode": HTTPStatus.CREATED})[0]
    assert status == 201
    assert type(status) is int


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("200", "statusCode must be an integer, got str"),
        (200.0, "statusCode must be an integer, got float"),
        (True, "statusCode must be an integer, got bool"),
        (False, "statusCode must be an integer, got bool"),
        ([200], "statusCode must be an integer, got list"),
        (b"200", "statusCode must be an integer, got bytes"),
        (99, "statusCode must be between 100 and 599, got 99"),
        (600, "statusCode must be between 100 and 599, got 600"),
        (0, "statusCode must be between 100 and 599, got 0"),
        (-200, "statusCode must be between 100 and 599, got -200"),
        (10**30, f"statusCode must be between 100 and 599, got {10**30}"),
    ],
)
def test_status_code_rejected(code, reason):
    assert malformed({"statusCode": code}) == reason


# --- map_http_response: headers -------------------------------------------------------------


def test_headers_and_multi_value_headers():
    result = {
        "headers": {"content-type": "text/html", "X-One": "1"},
        "multiValueHeaders": {"set-cookie": ["a=1", "b=2"]},
    }
    assert response_headers(result) == [
        (b"Content-Type", b"text/html"),
        (b"X-One", b"1"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([], "headers must be an object (dict), got list"),
        ("X-A: b", "headers must be an object (dict), got str"),
        ({"X-Count": 3}, "headers['X-Count'] must be a string, got int"),
        ({"X-On": True}, "headers['X-On'] must be a string, got bool"),
        ({"X-List": ["a"]}, "headers['X-List'] must be a string, got list"),
        ({"X-Raw": b"a"}, "headers['X-Raw'] must be a string, got bytes"),
        ({"X-A": "ok", 7: "seven"}, "headers key 7 must be a string, got int"),
        ({b"X-A": "a"}, "headers key b'X-A' must be a string, got bytes"),
    ],
)
def test_headers_type_errors(value, reason):
    assert malformed({"headers": value}) == reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([["X-A", "b"]], "multiValueHeaders must be an object (dict), got list"),
        ({"X-A": "b"}, "multiValueHeaders['X-A'] must be a list of strings, got str"),
        ({"X-A": {"b": 1}}, "multiValueHeaders['X-A'] must be a list of strings, got dict"),
        ({"X-A": ["a", 2]}, "multiValueHeaders['X-A'][1] must be a string, got int"),
        ({"X-A": [None]}, "multiValueHeaders['X-A'][0] must be a string, got NoneType"),
        ({"X-A": [["a"]]}, "multiValueHeaders['X-A'][0] must be a string, got list"),
        ({1.5: ["a"]}, "multiValueHeaders key 1.5 must be a string, got float"),
    ],
)
def test_multi_value_headers_type_errors(value, reason):
    assert malformed({"multiValueHeaders": value}) == reason


def test_header_set_to_none_is_absent():
    result = {"headers": {"X-A": None, "X-B": "b"}, "multiValueHeaders": {"X-B": None}}
    assert response_headers(result) == [(b"X-B", b"b")]


def test_multi_value_headers_accept_tuples():
    assert response_headers({"multiValueHeaders": {"X-A": ("1", "2")}}) == [
        (b"X-A", b"1"),
        (b"X-A", b"2"),
    ]


def test_multi_value_headers_win_over_headers_by_canonical_name():
    result = {
        "headers": {"content-type": "text/plain", "X-Keep": "k"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
    }
    assert response_headers(result) == [
        (b"X-Keep", b"k"),
        (b"Content-Type", b"application/json"),
    ]


def test_empty_multi_value_list_wins_and_sends_nothing():
    result = {"headers": {"X-A": "single"}, "multiValueHeaders": {"x-a": []}}
    assert response_headers(result) == []


def test_headers_repeated_canonical_name_last_wins():
    result = {"headers": {"x-a": "first", "X-A": "second"}}
    assert response_headers(result) == [(b"X-A", b"second")]


def test_multi_value_headers_repeated_canonical_name_accumulate():
    result = {"multiValueHeaders": {"x-a": ["1"], "X-A": ["2", "3"]}}
    assert response_headers(result) == [(b"X-A", b"1"), (b"X-A", b"2"), (b"X-A", b"3")]


def test_headers_not_mutated():
    headers = {"date": "today"}
    multi = {"x-a": ["1"]}
    map_http_response({"headers": headers, "multiValueHeaders": multi})
    assert headers == {"date": "today"}
    assert multi == {"x-a": ["1"]}


DROPPED_RESPONSE_HEADERS = [
    "Host", "Authorization", "User-Agent", "Connection", "Max-Forwards", "Cookie",
    "Content-Length",
]  # fmt: skip


@pytest.mark.parametrize("name", DROPPED_RESPONSE_HEADERS)
@pytest.mark.parametrize("field", ["headers", "multiValueHeaders"])
def test_dropped_response_headers(name, field):
    value = "x" if field == "headers" else ["x"]
    result = {field: {name.lower(): value, "X-Kept": value}}
    assert response_headers(result) == [(b"X-Kept", b"x")]


@pytest.mark.parametrize("name", ["Proxy-Authenticate", "Transfer-Encoding", "Via"])
@pytest.mark.parametrize("field", ["headers", "multiValueHeaders"])
@pytest.mark.parametrize("spelling", [str, str.lower, str.upper])
def test_forbidden_response_headers(name, field, spelling):
    value = "x" if field == "headers" else ["x"]
    reason = malformed({field: {spelling(name): value}})
    assert reason == f"header '{name}' is not allowed in a function response"


def test_forbidden_header_fails_even_when_overridden():
    result = {"headers": {"Via": "proxy"}, "multiValueHeaders": {"via": []}}
    assert malformed(result) == "header 'Via' is not allowed in a function response"


@pytest.mark.parametrize("name", ["Content-Md5", "Date", "Server", "Www-Authenticate"])
@pytest.mark.parametrize("field", ["headers", "multiValueHeaders"])
def test_remapped_response_headers(name, field):
    value = "v" if field == "headers" else ["v"]
    result = {field: {name.upper(): value}}
    assert response_headers(result) == [(f"X-Yf-Remapped-{name}".encode(), b"v")]


@pytest.mark.parametrize(
    "name", ["", "X Bad", "X:Y", "X-Evil\r\nSet-Cookie", "X\nY", "naïve", "X(Y)", " X"]
)
def test_invalid_response_header_names_are_dropped(name):
    result = {"headers": {name: "v", "X-Ok": "ok"}, "multiValueHeaders": {name: ["w"]}}
    assert response_headers(result) == [(b"X-Ok", b"ok")]


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("plain", b"plain"),
        ("", b""),
        ("a\r\nSet-Cookie: evil=1", b"a  Set-Cookie: evil=1"),
        ("a\nb", b"a b"),
        ("a\rb", b"a b"),
        ("a\x00b", b"ab"),
        ("a\x01\x1f\x7fb", b"ab"),
        ("a\tb", b"a\tb"),
        ("  padded\t ", b"padded"),
        ("value\r\n", b"value"),
        ("café", "café".encode()),
        ("€ 5", "€ 5".encode()),
        ("ÿ", "ÿ".encode()),
        ("a\u00a0b", "a\u00a0b".encode()),
    ],
)
def test_response_header_values(value, wire):
    assert response_headers({"headers": {"X-V": value}}) == [(b"X-V", wire)]
    assert response_headers({"multiValueHeaders": {"X-V": [value]}}) == [(b"X-V", wire)]


def test_response_header_wire_format_is_bytes():
    for name, value in response_headers({"headers": {"x-a": "b"}}):
        assert type(name) is bytes
        assert type(value) is bytes


# --- map_http_response: body ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "body"),
    [
        ({"body": "hello"}, b"hello"),
        ({"body": ""}, b""),
        ({"body": "привет"}, "привет".encode()),
        ({"body": "x", "isBase64Encoded": False}, b"x"),
        ({"body": "aGVsbG8sIHdvcmxkIQ==", "isBase64Encoded": True}, b"hello, world!"),
        ({"body": "AP8=", "isBase64Encoded": True}, b"\x00\xff"),
        ({"body": "", "isBase64Encoded": True}, b""),
        ({"isBase64Encoded": True}, b""),
        ({"body": "aGVs\nbG8s\r\nIHdvcmxkIQ==", "isBase64Encoded": True}, b"hello, world!"),
    ],
)
def test_response_body(result, body):
    assert map_http_response(result)[2] == body


@pytest.mark.parametrize(
    ("body", "type_name"),
    [({"a": 1}, "dict"), ([1], "list"), (b"raw", "bytes"), (1, "int"), (True, "bool")],
)
def test_body_must_be_a_string(body, type_name):
    assert malformed({"body": body}) == f"body must be a string, got {type_name}"


@pytest.mark.parametrize("flag", ["true", 1, 0, [True]])
def test_is_base64_encoded_must_be_a_boolean(flag):
    reason = malformed({"body": "", "isBase64Encoded": flag})
    assert reason == f"isBase64Encoded must be a boolean, got {type(flag).__name__}"


@pytest.mark.parametrize(
    "body", ["not base64!", "aGVsbG8", "aGVsbG8===", "aGV sbG8=", "aGVs-bG8_", "привет", "=="]
)
def test_invalid_base64_body(body):
    reason = malformed({"body": body, "isBase64Encoded": True})
    assert reason.startswith("body is not valid base64")


def test_first_problem_is_reported():
    reason = malformed({"statusCode": "200", "headers": {"X": 1}, "body": 5})
    assert reason == "statusCode must be an integer, got str"


# --- map_raw_response -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "body"),
    [
        ("hello", b"hello"),
        ("", b""),
        ("привет", "привет".encode()),
        (None, b"null"),
        ({"a": 1, "b": [1, 2]}, b'{"a": 1, "b": [1, 2]}'),
        ({"name": "é"}, b'{"name": "\\u00e9"}'),
        ([1, "x", None], b'[1, "x", null]'),
        (42, b"42"),
        (1.5, b"1.5"),
        (True, b"true"),
        (False, b"false"),
        ({}, b"{}"),
        ({"statusCode": 404}, b'{"statusCode": 404}'),
    ],
)
def test_map_raw_response(result, body):
    assert map_raw_response(result) == body


@pytest.mark.parametrize("result", [b"bytes", {"a": b"x"}, [1, {2, 3}], {b"k": 1}])
def test_raw_response_not_serializable(result):
    with pytest.raises(MalformedResponse) as info:
        map_raw_response(result)
    assert str(info.value).startswith("the result is not JSON-serializable: ")


# --- malformed_error ------------------------------------------------------------------------


def test_malformed_error_shape():
    result = {"statusCode": "200", "body": "привет"}
    error = malformed_error("statusCode must be an integer, got str", result)
    assert error == {
        "errorMessage": "Malformed serverless function response: "
        "statusCode must be an integer, got str",
        "errorType": "ProxyIntegrationError",
        "payload": '{"statusCode": "200", "body": "привет"}',
    }
    assert json.loads(json.dumps(error)) == error


@pytest.mark.parametrize(
    ("result", "payload"),
    [
        ([1, 2], "[1, 2]"),
        ("text", '"text"'),
        (None, "null"),
        (b"\x00", "\"b'\\\\x00'\""),
        ({"body": b"x"}, '{"body": "b\'x\'"}'),
    ],
)
def test_malformed_error_payload_is_json_text(result, payload):
    assert malformed_error("r", result)["payload"] == payload


def test_malformed_error_payload_falls_back_to_repr():
    result = {b"key": "v"}
    assert malformed_error("r", result)["payload"] == repr(result)
    looped: list = []
    looped.append(looped)
    assert malformed_error("r", looped)["payload"] == repr(looped)


def test_malformed_error_for_each_mapping_failure():
    for result in ([], {"statusCode": True}, {"headers": {"Via": "x"}}, {"body": 1}):
        with pytest.raises(MalformedResponse) as info:
            map_http_response(result)
        error = malformed_error(str(info.value), result)
        assert error["errorMessage"].endswith(str(info.value))
        assert json.loads(error["payload"]) == result


class _Color(enum.Enum):
    RED = 1


def test_malformed_error_with_unusual_values_uses_repr_inside_json():
    payload = malformed_error("r", {"c": _Color.RED})["payload"]
    assert json.loads(payload) == {"c": "<_Color.RED: 1>"}


# --- map_http_response_lines ------------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [
        {"statusCode": 201, "headers": {"content-type": "text/plain", "X-A": "a\r\nb"},
         "body": "hi"},
        {"headers": {"Date": "x", "Connection": "close", "bad name": "v"}},
        {"multiValueHeaders": {"x-m": ["1", "2"]}, "headers": {"X-M": "0", "X-S": "s"}},
        {"body": "aGk=", "isBase64Encoded": True},
    ],
)
def test_response_lines_are_the_mapped_headers_rendered(result):
    status, headers, body = map_http_response(result)
    for _ in range(2):  # the second time from the cache, where one is kept
        assert events.map_http_response_lines(result) == (
            status, events.header_lines(headers), body)


def test_response_lines_of_a_malformed_map_are_never_cached(monkeypatch):
    monkeypatch.setattr(events, "_lines_cache", {})
    for _ in range(2):
        with pytest.raises(MalformedResponse):
            events.map_http_response_lines({"headers": {"X-N": 5}})
    assert events._lines_cache == {}


def test_header_lines_render_name_colon_value_crlf():
    assert events.header_lines([(b"A", b"1"), (b"B", b"")]) == b"A: 1\r\nB: \r\n"


def test_trace_ids_are_version_4_uuids():
    ids = {events.new_id() for _ in range(100)}
    assert len(ids) == 100
    for text in ids:
        assert uuid.UUID(text).version == 4
        assert str(uuid.UUID(text)) == text
