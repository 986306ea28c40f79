"""The `hosting` scenario's function, served under 20 names: importing it costs about 5 ms of
CPU, as a few modules would; a call waits 5 ms, as for a database, and answers with the name it
is served under (so that routing is checked too)."""

import time

from burn import burn_cpu

IMPORT_CPU_S = 0.005
CALL_S = 0.005

burn_cpu(IMPORT_CPU_S)


def handler(event, context):
    time.sleep(CALL_S)
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"},
            "body": context.function_name}
