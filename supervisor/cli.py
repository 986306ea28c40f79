"""The `sfsupervisor` command: arguments (or SFSUPERVISOR_* variables) to a Config, then run."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from supervisor import __version__, configfile, sandbox
from supervisor.config import ENV_PREFIX, LOG_LEVELS, MB, Config

# The platform's default lifetime of an IAM token, in seconds.
TOKEN_EXPIRES_IN_S = 43200


class UsageError(Exception):
    """The command line (or a config file's value) is wrong; str() says how, in one line."""


class _StrictParser(argparse.ArgumentParser):
    """Raises UsageError where argparse would print its usage and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of `python -m supervisor`."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["reload"]:
            sys.exit(_reload(argv[1:]))
        if argv[:1] == ["invoke"]:
            from supervisor import invoke  # it builds on this module

            sys.exit(invoke.main(argv[1:]))
        config_file = _config_file(argv)
        if config_file is not None:
            host = configfile.load(config_file, _without_config_options(argv))
            if "--check" in argv:
                print(configfile.summary(host))
                sys.exit(0)
            from supervisor import runner

            sys.exit(runner.run_host(host))
        config = parse_config(argv)
    except (UsageError, configfile.ConfigFileError) as exc:
        sys.stderr.write(f"sfsupervisor: error: {exc}\n")
        sys.exit(2)
    # The sandbox's probe, a sealed interpreter's start, runs while the runner is imported.
    choice = sandbox.Choice(config)
    from supervisor import runner

    sys.exit(runner.run(config, choice))


def parse_config(argv: list[str] | None = None) -> Config:
    """Read the command line and environment; raises UsageError on any error."""
    return _config(_parser().parse_args(argv), need_entry=True)


def checked(path: Path, where: str, argv: list[str], need_entry: bool = True) -> Config:
    """A config file's table, as command-line tokens, to a Config; its errors name the key."""
    try:
        return _config(_parser(_StrictParser).parse_args(argv), need_entry)
    except UsageError as exc:
        message = str(exc)
        named = re.sub(r"^(argument )?--([a-z-]+)\b:?",
                       lambda m: f"{where}.{m.group(2).replace('-', '_')}:", message)
        if named == message:
            named = f"{where}: {message}"
        raise configfile.ConfigFileError(f"{path}: {named}") from None


def _config(args: argparse.Namespace, need_entry: bool) -> Config:
    if args.entrypoint is None:
        _fail("the entry point is required, e.g. `sfsupervisor index.handler` (or a "
              f"{configfile.DEFAULT_FILE} here, or --config FILE)")
    code_root = Path(args.dir).resolve()
    if not code_root.is_dir():
        _fail(f"--dir {code_root} is not a directory")
    if need_entry:
        _check_entrypoint(args.entrypoint, code_root)
    _check_range("--instances", args.instances, 1, 1024)
    _check_range("--port", args.port, 0, 65535)
    _check_range("--timeout", args.timeout, 0.001, 86400)
    _check_range("--memory", args.memory, 1, 1024 * 1024)
    _check_range("--spares", args.spares, 0, 1024)
    _check_range("--max-calls", args.max_calls, 0, 2**31)
    _check_range("--address-space-mb", args.address_space_mb, 0, 2**31)
    _check_range("--max-queue", args.max_queue, 0, 1_000_000)
    _check_range("--max-queue-mb", args.max_queue_mb, 0.001, 1024 * 1024)
    _check_range("--unhealthy-after", args.unhealthy_after, 0.001, 86400)
    _check_range("--graceful-timeout", args.graceful_timeout, 0, 86400)
    _check_range("--read-timeout", args.read_timeout, 0.001, 86400)
    _check_range("--tmp-mb", args.tmp_mb, 1, 1024 * 1024)
    _check_range("--max-pids", args.max_pids, 8, 4_194_304)
    _check_range("--max-request-mb", args.max_request_mb, 0.001, 1024)
    _check_range("--max-response-mb", args.max_response_mb, 0.001, 1024)
    env = _read_env_file(args.env_file) if args.env_file else {}
    env.update(_parse_assignment(item, "--env") for item in args.env)
    return Config(
        entrypoint=args.entrypoint,
        code_root=code_root,
        instances=args.instances,
        host=args.host,
        port=args.port,
        timeout_s=args.timeout,
        memory_mb=args.memory,
        memory_enforcement=args.memory_enforcement,
        address_space_mb=args.address_space_mb,
        spares=args.spares,
        max_calls=args.max_calls,
        max_queue=args.max_queue,
        max_queue_bytes=int(args.max_queue_mb * MB),
        unhealthy_after_s=args.unhealthy_after,
        graceful_timeout_s=args.graceful_timeout,
        read_timeout_s=args.read_timeout,
        max_request_bytes=int(args.max_request_mb * MB),
        max_response_bytes=int(args.max_response_mb * MB),
        function_name=args.function_name or code_root.name or "function",
        function_version=args.function_version,
        env=env,
        token=_parse_token(args.token) if args.token else None,
        sandbox=args.sandbox,
        sandbox_uids=_parse_uid_range(args.sandbox_uids),
        pass_env=tuple(args.pass_env),
        no_network=args.no_network,
        tmp_mb=args.tmp_mb,
        max_pids=args.max_pids,
        reload=args.reload,
        log_format=args.log_format,
        log_level=args.log_level,
    )


def _parser(kind: type[argparse.ArgumentParser] = argparse.ArgumentParser
            ) -> argparse.ArgumentParser:
    parser = kind(
        prog="sfsupervisor",
        description="Serve a Python serverless function (Yandex Cloud Functions model, "
                    "handler(event, context)) over HTTP from a pool of isolated worker "
                    f"processes. Every option can also be set by an environment variable "
                    f"({ENV_PREFIX}<OPTION>, shown with each option).",
    )
    option = _OptionAdder(parser)
    parser.add_argument("entrypoint", metavar="ENTRYPOINT", nargs="?",
                        default=os.environ.get(f"{ENV_PREFIX}ENTRYPOINT"),
                        help="the handler as <file>.<function>, e.g. index.handler "
                             f"(env {ENV_PREFIX}ENTRYPOINT)")
    option("--dir", str, ".", "the function's code root: the directory holding <file>.py")
    option("--instances", int, 1, "worker processes, each serving one call at a time")
    option("--host", str, "127.0.0.1", "address to listen on")
    option("--port", int, int(os.environ.get("PORT", "8080")),
           "port to listen on (also $PORT; 0 picks a free one)")
    option("--timeout", float, 5.0, "execution timeout of a call in seconds; an instance's "
                                    "first call includes its initialization")
    option("--memory", int, 128, "memory limit of an instance in MB, its children included "
                                 "(context.memory_limit_in_mb)")
    option("--memory-enforcement", str, "auto", "how the memory limit is enforced: a cgroup "
           "per instance where one can be made, else a sampling watchdog (auto), or insist on "
           "one", choices=["auto", "cgroup", "watchdog"])
    option("--address-space-mb", int, 0, "also limit each worker's address space (RLIMIT_AS) "
           "to this many MB; 0 = off. Beware: numpy alone reserves ~1 GB of address space")
    option("--spares", int, 1, "warm instances kept initialized beyond --instances, so that "
           "the call after a crash or timeout does not wait for a cold start")
    option("--max-calls", int, 0, "recycle an instance after about this many calls "
           "(less up to a tenth, at random); 0 = never")
    option("--max-queue", int, 256, "calls that may wait for a free instance; beyond that a "
           "call gets 429 at once, and so does one that waits longer than --timeout")
    option("--max-queue-mb", float, 64.0, "memory the request bodies of waiting calls may "
           "hold in MB; a call that would pass it gets 429 at once")
    option("--unhealthy-after", float, 30.0, "/healthz answers 503 once no worker could be "
           "started for this many seconds and none is left, so that an orchestrator restarts "
           "the server")
    option("--graceful-timeout", float, 30.0, "on SIGTERM/SIGINT, how long calls in flight and "
           "waiting may take to finish before they are answered 503 and workers are stopped")
    option("--read-timeout", float, 10.0, "a request must arrive whole within this many "
           "seconds of its first byte, or its connection is closed (slow clients)")
    option("--max-request-mb", float, 3.5, "largest request body in MB (larger: 413)")
    option("--max-response-mb", float, 3.5, "largest function response in MB (larger: 502)")
    option("--sandbox", str, "auto", "how each instance is sealed off: ns (namespaces and a "
           "uid of its own), uid (a uid of its own), none; auto takes the strongest this "
           "machine allows and the startup line names it", choices=["auto", "ns", "uid", "none"])
    option("--sandbox-uids", str, "20000-29999", "the range of uids (and gids) given one per "
           "instance when the supervisor runs as root")
    option("--tmp-mb", int, 512, "size of each instance's private /tmp (ns sandbox)")
    option("--max-pids", int, 512, "processes and threads an instance may have at once")
    option("--no-network", yes_no, False, "give each instance a network namespace with only "
           "loopback (ns sandbox)")
    option("--reload", yes_no, False, "replace the instances whenever a .py file under the "
           "code root changes: the next call runs the new code (for development)")
    option("--function-name", str, None, "context.function_name (default: the code root's name)")
    option("--function-version", str, "$latest", "context.function_version")
    option("--env-file", str, None, "file of KEY=VALUE lines for the function's environment")
    option("--token", str, None, "context.token: a JSON object, or a bare IAM token")
    option("--log-format", str, "text", "log lines as text or json", choices=["text", "json"])
    option("--log-level", str, "info", "least severe level logged", choices=list(LOG_LEVELS))
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the function (repeatable)")
    parser.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                        help="pass this variable of the supervisor's environment on to the "
                             "function (repeatable); nothing else of it is passed")
    parser.add_argument("--config", metavar="FILE", help="serve the functions of a TOML file "
                        f"(default: {configfile.DEFAULT_FILE} here when no ENTRYPOINT is given)")
    parser.add_argument("--check", action="store_true",
                        help="with --config: check the file and its functions, then exit")
    parser.add_argument("--version", action="version", version=f"sfsupervisor {__version__}")
    return parser


class _OptionAdder:
    """Adds an option whose default comes from SFSUPERVISOR_<NAME> when that is set."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._parser = parser

    def __call__(self, flag: str, kind: Callable[[str], Any], default: Any, help_text: str,
                 **extra: Any) -> None:
        variable = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
        if variable in os.environ:
            default = _convert(os.environ[variable], kind, variable)
        shown = f" (default: {default})" if default is not None else ""
        typed = {"action": "store_true"} if kind is yes_no else {"type": kind}
        self._parser.add_argument(flag, default=default,
                                  help=f"{help_text}{shown} (env {variable})", **typed, **extra)


def _convert(raw: str, kind: Callable[[str], Any], variable: str) -> Any:
    try:
        return kind(raw)
    except ValueError:
        _fail(f"{variable}={raw!r} is not a valid {kind.__name__}")


def _check_entrypoint(entrypoint: str, code_root: Path) -> None:
    file_name, dot, function_name = entrypoint.rpartition(".")
    if not dot or not file_name or not function_name or "/" in entrypoint:
        _fail(f"entry point {entrypoint!r} is malformed: expected <file>.<function>, "
              "e.g. index.handler")
    if "." in file_name:
        _fail(f"entry point {entrypoint!r}: the file name {file_name!r} contains a dot, "
              "which the platform does not allow")
    if not (code_root / f"{file_name}.py").is_file():
        _fail(f"entry point {entrypoint!r}: there is no {file_name}.py in {code_root} "
              "(the code root; set it with --dir)")


def _check_range(flag: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        _fail(f"{flag} must be between {_shown(low)} and {_shown(high)}, got {_shown(value)}")


def _shown(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _parse_assignment(text: str, where: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    key = key.strip()
    if not equals or not key or any(c.isspace() for c in key):
        _fail(f"{where}: expected KEY=VALUE, got {text!r}")
    return key, value


def _read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines; blank lines, # comments and an `export ` prefix are allowed."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        _fail(f"--env-file {path}: {exc.strerror or exc}")
    env: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = _parse_assignment(line.removeprefix("export "), f"{path}:{number}")
        env[key] = _unquote(value.strip())
    return env


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _parse_uid_range(text: str) -> tuple[int, int]:
    first, dash, last = text.partition("-")
    try:
        low, high = int(first), int(last)
    except ValueError:
        low = high = -1
    if not dash or not 1 <= low <= high < 2**32 - 1:
        _fail(f"--sandbox-uids must be a range FIRST-LAST of uids above 0, got {text!r}")
    return low, high


def yes_no(text: str) -> bool:
    """A yes/no option's value from the environment: 1/0, true/false, yes/no, on/off."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def _parse_token(text: str) -> dict[str, Any]:
    if not text.lstrip().startswith("{"):
        return {"access_token": text, "expires_in": TOKEN_EXPIRES_IN_S, "token_type": "Bearer"}
    try:
        token = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"--token is not valid JSON: {exc}")
    if not isinstance(token, dict):
        _fail("--token must be a JSON object or a bare token")
    return token


def _fail(message: str) -> NoReturn:
    raise UsageError(message)


def _reload(argv: list[str]) -> int:
    """`sfsupervisor reload [--config FILE]`: SIGHUP to the supervisor serving that file."""
    path = _config_file(argv) or Path(configfile.DEFAULT_FILE)
    pid_path = configfile.pid_file(path)
    try:
        pid = int(pid_path.read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if b"supervisor" not in cmdline.read():
                raise ProcessLookupError(pid)
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        sys.stderr.write(f"sfsupervisor: error: no supervisor serves {path} here "
                         f"(no live pid in {pid_path})\n")
        return 1
    print(f"reloading {path} (pid {pid})")
    return 0


def _config_file(argv: list[str]) -> Path | None:
    """The file of --config, or sfsupervisor.toml here when no entry point is given."""
    for index, token in enumerate(argv):
        if token == "--config" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if token.startswith("--config="):
            return Path(token.removeprefix("--config="))
    if _parser(_StrictParser).parse_known_args(argv)[0].entrypoint is not None:
        return None
    here = Path(configfile.DEFAULT_FILE)
    try:
        return here if here.is_file() else None
    except OSError:  # a working directory we may not look into holds no file of ours
        return None


def _without_config_options(argv: list[str]) -> list[str]:
    """The command line less --config FILE and --check: the rest overrides the file's [server]."""
    kept: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token == "--config":
            skip = True
        elif not token.startswith("--config=") and token != "--check":
            kept.append(token)
    return kept
