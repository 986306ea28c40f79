"""`sfsupervisor invoke ENTRY [--data JSON | --file F] [--raw] [options]`: one call, for
scripts and CI.

The entry point is imported in a real worker, under the same options, limits and sandbox as
when serving; the event (a JSON document, `{}` by default) goes in as through the Lambda Invoke
API, and the handler's result is printed to stdout as JSON (indented; with --raw as it came,
a string result as its text). The runtime's lines (START, the function's output, END, REPORT)
go to stderr. The exit code is 0 when the handler returned, 1 when the call failed in any way
(its error object is printed instead), 2 for a command line that is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from supervisor import cli, lambda_api, logs, responses, runner, sandbox
from supervisor.calls import Call, Outcome
from supervisor.config import Config, FunctionSettings
from supervisor.http import new_id
from worker import protocol


def main(argv: list[str]) -> int:
    """Run the invoke subcommand; the exit code."""
    wanted, serving_options = _parser().parse_known_args(argv)
    event = _event(wanted)
    config = cli.parse_config([*serving_options, "--instances", "1", "--spares", "0"])
    try:
        chosen = sandbox.choose(config)
    except sandbox.SandboxUnavailable as exc:
        sys.stderr.write(f"sfsupervisor: error: {exc}\n")
        return 2
    with asyncio.Runner(loop_factory=runner.loop_factory()) as loop_runner:
        answer = loop_runner.run(_call_once(config, chosen, event))
    if answer is None:
        return 1
    _, _, _, body, error_message = answer
    if error_message is not None:
        print(json.dumps(json.loads(body), indent=2, ensure_ascii=False))
        return 1
    print(_shown(body, wanted.raw))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfsupervisor invoke",
        description="Call the function once with an event and print its result; every other "
                    "option is sfsupervisor's own (--dir, --memory, --timeout, --env, ...).")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="the event, a JSON document (default: {})")
    source.add_argument("--file", type=Path, help="read the event from this file (- for stdin)")
    parser.add_argument("--raw", action="store_true",
                        help="print the result as it came: a string as its text, anything "
                             "else as compact JSON")
    return parser


def _event(wanted: argparse.Namespace) -> bytes:
    """The event's bytes; a document that is not JSON stops the command (exit 2)."""
    if wanted.file is not None:
        source = str(wanted.file)
        try:
            text = sys.stdin.buffer.read() if source == "-" else wanted.file.read_bytes()
        except OSError as exc:
            _usage_error(f"--file {source}: {exc.strerror or exc}")
    else:
        source, text = "--data", (wanted.data or "{}").encode()
    try:
        json.loads(text)
    except ValueError as exc:
        _usage_error(f"{source}: the event is not JSON: {exc}")
    return text


def _usage_error(message: str) -> None:
    sys.stderr.write(f"sfsupervisor invoke: error: {message}\n")
    sys.exit(2)


async def _call_once(config: Config, chosen: sandbox.Sandbox,
                     event: bytes) -> responses.Response | None:
    """Start one instance, make the call, stop; the call's rendered answer (None: no instance
    could be set up, said in the log)."""
    log = logs.Log(config.log_format, config.log_level, config.function_name)
    log.attach(asyncio.get_running_loop())
    settings = FunctionSettings(config.function_name, config)
    done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    call = Call(new_id(), [protocol.LAMBDA_EVENT, None], event, time.perf_counter(),
                lambda _, outcome: done.set_result(outcome))
    try:
        async with runner.running_host(config, [settings], chosen, log, ()) as (host, _):
            host.start()
            host.pools[settings.name].submit(call)
            outcome = await done
            answer = lambda_api.render(outcome, call.request_id, config.timeout_s,
                                       config.max_response_bytes)
            status, _, _, _, error_message = answer
            logs.call_end(log, call, status, error_message, config.memory_mb, None)
    except runner.MemoryEnforcementUnavailable:
        return None
    finally:
        log.close(runner.LOG_DRAIN_TIMEOUT_S)
    return answer


def _shown(body: bytes, raw: bool) -> str:
    result = json.loads(body)
    if raw:
        return result if isinstance(result, str) else body.decode()
    return json.dumps(result, indent=2, ensure_ascii=False)
