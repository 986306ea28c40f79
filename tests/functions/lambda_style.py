"""A Lambda-style handler for the Invoke API tests (tests/test_e2e_lambda.py).

The event is a JSON object; its "action" says what to do (default: echo the event back).
"""

import os
import time


def handler(event, context):
    action = event.get("action", "echo") if isinstance(event, dict) else "echo"
    if action == "echo":
        return {"event": event, "function_name": context.function_name,
                "request_id": context.aws_request_id}
    if action == "client_context":
        client_context = context.client_context
        if client_context is None:
            return None
        return {"custom": client_context.custom, "env": client_context.env,
                "app_title": client_context.client and client_context.client.app_title}
    if action == "print":
        for number in range(event.get("lines", 1)):
            print(f"line {number} {'x' * event.get('width', 0)}")
        return "printed"
    if action == "raise":
        raise ValueError("the event was not to my liking")
    if action == "sleep":
        time.sleep(event["seconds"])
        return "slept"
    if action == "unserializable":
        return {"when": object()}
    if action == "exit":
        os._exit(3)
    if action == "mark":
        with open(event["path"], "a") as marks:
            marks.write(event["mark"] + "\n")
        return "marked"
    return {"unknown action": action}
