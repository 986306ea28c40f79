"""End to end: the Lambda Invoke API, spoken by boto3 unchanged (and by hand where boto3 would
refuse to send the request)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import pytest
from e2e_helpers import Launch, Supervisor, shared_file
from test_e2e_hosting import function_table, launch_hosting, write_config

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 1
INVOKE_PATH = "/2015-03-31/functions/{name}/invocations"


@pytest.fixture(scope="module")
def lambda_function(launch_module_supervisor: Launch) -> Supervisor:
    return launch_module_supervisor("lambda_style.handler", "--instances", "2",
                                    "--timeout", str(TIMEOUT_S), "--log-format", "json")


def lambda_client(supervisor: Supervisor) -> Any:
    """boto3's Lambda client pointed at the supervisor, as a user would make it."""
    return boto3.client(
        "lambda", endpoint_url=f"http://127.0.0.1:{supervisor.port}", region_name="us-east-1",
        aws_access_key_id="local", aws_secret_access_key="local",
        config=botocore.client.Config(retries={"max_attempts": 1}, read_timeout=30))


def invoke(supervisor: Supervisor, event: Any = None, name: str = "my-function",
           **options: Any) -> dict[str, Any]:
    """boto3's invoke(); the answer, with the payload read (and parsed when there is one)."""
    arguments: dict[str, Any] = {"FunctionName": name, **options}
    if event is not None:
        arguments["Payload"] = json.dumps(event).encode()
    answer = lambda_client(supervisor).invoke(**arguments)
    payload = answer["Payload"].read()
    answer["Payload"] = json.loads(payload) if payload else None
    return answer


def test_the_event_is_the_json_body_and_the_result_comes_back_as_json(
    lambda_function: Supervisor,
) -> None:
    answer = invoke(lambda_function, {"action": "echo", "items": [1, "two", None]})
    assert answer["StatusCode"] == 200
    assert answer["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in answer
    assert answer["Payload"]["event"] == {"action": "echo", "items": [1, "two", None]}
    assert answer["Payload"]["request_id"] == answer["ResponseMetadata"]["HTTPHeaders"][
        "x-request-id"]


def test_no_payload_is_an_empty_event(lambda_function: Supervisor) -> None:
    assert invoke(lambda_function)["Payload"]["event"] == {}


@pytest.mark.parametrize("name", [
    "any-name", "any-name:live", "123456789012:function:any-name",
    "arn:aws:lambda:us-east-1:123456789012:function:any-name:7",
])
def test_single_function_mode_answers_to_any_name(lambda_function: Supervisor, name: str) -> None:
    assert invoke(lambda_function, {"action": "echo"}, name=name)["StatusCode"] == 200


def test_a_handler_error_is_200_with_unhandled_and_the_error_object(
    lambda_function: Supervisor,
) -> None:
    answer = invoke(lambda_function, {"action": "raise"})
    assert answer["StatusCode"] == 200
    assert answer["FunctionError"] == "Unhandled"
    error = answer["Payload"]
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "the event was not to my liking"
    assert any("lambda_style.py" in line for line in error["stackTrace"])


def test_a_timeout_says_task_timed_out(lambda_function: Supervisor) -> None:
    answer = invoke(lambda_function, {"action": "sleep", "seconds": TIMEOUT_S + 2})
    assert answer["FunctionError"] == "Unhandled"
    assert f"Task timed out after {TIMEOUT_S}.00 seconds" in answer["Payload"]["errorMessage"]
    assert invoke(lambda_function, {"action": "echo"})["StatusCode"] == 200


def test_a_result_that_is_not_json_is_a_marshal_error(lambda_function: Supervisor) -> None:
    answer = invoke(lambda_function, {"action": "unserializable"})
    assert answer["FunctionError"] == "Unhandled"
    assert answer["Payload"]["errorType"] == "Runtime.MarshalError"
    assert "object" in answer["Payload"]["errorMessage"]


def test_a_worker_that_exits_is_an_unhandled_runtime_error(lambda_function: Supervisor) -> None:
    answer = invoke(lambda_function, {"action": "exit"})
    assert answer["StatusCode"] == 200
    assert answer["FunctionError"] == "Unhandled"
    assert answer["Payload"]["errorType"] == "Runtime.ExitError"
    assert invoke(lambda_function, {"action": "echo"})["StatusCode"] == 200


def test_tail_returns_the_end_of_the_calls_log(lambda_function: Supervisor) -> None:
    answer = invoke(lambda_function, {"action": "print", "lines": 3}, LogType="Tail")
    log = base64.b64decode(answer["LogResult"]).decode()
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-request-id"]
    lines = log.splitlines()
    assert lines[0].startswith(f"START RequestID: {request_id} Version: ")
    assert lines[1:4] == ["line 0 ", "line 1 ", "line 2 "]
    assert lines[4] == f"END RequestID: {request_id}"
    assert lines[5].startswith(f"REPORT RequestID: {request_id} Duration:")


def test_tail_keeps_the_last_4_kb(lambda_function: Supervisor) -> None:
    answer = invoke(lambda_function, {"action": "print", "lines": 200, "width": 100},
                    LogType="Tail")
    log = base64.b64decode(answer["LogResult"])
    assert 3500 < len(log) <= 4096
    assert b"line 199 " in log and b"line 0 " not in log
    assert b"REPORT RequestID:" in log


def test_without_tail_there_is_no_log_result(lambda_function: Supervisor) -> None:
    assert "LogResult" not in invoke(lambda_function, {"action": "print"})


def test_the_client_context_reaches_the_handler(lambda_function: Supervisor) -> None:
    client_context = {"client": {"app_title": "shop", "installation_id": "i-1"},
                      "custom": {"cart": 3}, "env": {"locale": "en"}}
    encoded = base64.b64encode(json.dumps(client_context).encode()).decode()
    answer = invoke(lambda_function, {"action": "client_context"}, ClientContext=encoded)
    assert answer["Payload"] == {"custom": {"cart": 3}, "env": {"locale": "en"},
                                 "app_title": "shop"}
    assert invoke(lambda_function, {"action": "client_context"})["Payload"] is None


def marking(marks: Path, mark: str) -> dict[str, str]:
    """The event of a call that appends `mark` to the file `marks`."""
    return {"action": "mark", "path": str(marks), "mark": mark}


def test_an_event_invocation_answers_202_and_runs(lambda_function: Supervisor,
                                                    shared_dir: Path) -> None:
    marks = shared_file(shared_dir, "marks")
    answer = invoke(lambda_function, marking(marks, "queued"), InvocationType="Event")
    assert answer["StatusCode"] == 202
    lambda_function.wait_until(lambda: marks.read_text() == "queued\n", "the event call's mark")


def test_a_dry_run_answers_204_and_runs_nothing(lambda_function: Supervisor,
                                                 shared_dir: Path) -> None:
    marks = shared_file(shared_dir, "marks")
    dry = invoke(lambda_function, marking(marks, "dry"), InvocationType="DryRun")
    assert dry["StatusCode"] == 204
    invoke(lambda_function, marking(marks, "real"))
    assert marks.read_text() == "real\n"


def test_a_body_that_is_not_json_is_invalid_request_content(lambda_function: Supervisor) -> None:
    client = lambda_client(lambda_function)
    with pytest.raises(client.exceptions.InvalidRequestContentException) as raised:
        client.invoke(FunctionName="f", Payload=b"{not json")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_a_client_context_that_is_not_base64_json_is_refused(lambda_function: Supervisor) -> None:
    client = lambda_client(lambda_function)
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        client.invoke(FunctionName="f", Payload=b"{}", ClientContext="not base64 at all!")


def test_what_boto3_would_not_send_is_refused_by_name(lambda_function: Supervisor) -> None:
    path = INVOKE_PATH.format(name="f")
    bad_type = lambda_function.request("POST", path, content=b"{}",
                                       headers={"X-Amz-Invocation-Type": "Later"})
    assert bad_type.status_code == 400
    assert bad_type.headers["x-amzn-ErrorType"] == "InvalidParameterValueException"
    wrong_method = lambda_function.request("GET", path)
    assert wrong_method.status_code == 404
    assert wrong_method.headers["x-amzn-ErrorType"] == "UnknownOperationException"
    assert wrong_method.json()["message"].startswith("no operation GET")


def test_with_a_config_file_the_name_picks_the_function(launch_supervisor: Launch,
                                                          tmp_path: Path) -> None:
    config = write_config(tmp_path / "hosting.toml",
                          function_table("lam", entry="lambda_style.handler"),
                          function_table("web", entry="hosted.handler"))
    supervisor = launch_hosting(launch_supervisor, config)
    assert invoke(supervisor, {"action": "echo"}, name="lam")["Payload"]["event"] == {
        "action": "echo"}
    arn = "arn:aws:lambda:us-east-1:123456789012:function:lam"
    assert invoke(supervisor, {"action": "echo"}, name=arn)["StatusCode"] == 200
    client = lambda_client(supervisor)
    with pytest.raises(client.exceptions.ResourceNotFoundException) as raised:
        client.invoke(FunctionName="missing", Payload=b"{}")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "missing" in raised.value.response["Error"]["Message"]


def test_the_platform_http_path_still_serves_beside_the_api(lambda_function: Supervisor) -> None:
    response = lambda_function.request("POST", "/", content=b'{"action": "echo"}',
                                       params={"integration": "raw"})
    assert response.status_code == 200
    assert response.json()["event"] == '{"action": "echo"}'
