"""`--config FILE.toml`: many functions on one server, each with its own settings.

    [server]                 # any command-line option, same names with underscores
    port = 8080
    max_instances = 16       # all functions together
    max_memory_mb = 2048     # the sum of live instances' memory limits
    [functions.hello]
    dir = "hello"            # relative to the file
    entry = "index.handler"
    memory = 128             # any per-function option: timeout, env, env_file, spares, ...
    min_instances = 0        # kept initialized (provisioned)
    max_instances = 4        # this function's concurrency
    idle_timeout = 300       # seconds an idle instance above min_instances lives
    python = "venvs/hello/bin/python"   # the interpreter of its workers

Every value goes through the command line's own parser and checks, so a value means in the file
what it means on the command line, and a bad one is refused the same way: with one line that
names the file, the key and the problem.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from supervisor.config import Config, FunctionSettings

DEFAULT_FILE = "sfsupervisor.toml"
INTERPRETER_CHECK_TIMEOUT_S = 30.0
_WORKER_NEEDS = ("import sys\n"
                 "if sys.version_info < (3, 11): sys.exit(f'is Python {sys.version.split()[0]}; "
                 "the worker needs 3.11 or newer')\n"
                 "import msgpack")
# Keys of [server] that belong to no single function: the host's budgets.
HOST_KEYS = {"max_instances": int, "max_memory_mb": int}
# Keys of a function's table that are not command-line options.
FUNCTION_ONLY_KEYS = {"dir", "entry", "min_instances", "max_instances", "idle_timeout", "python",
                      "env"}
# Command-line options that a function's table may set (the rest are the server's).
FUNCTION_OPTIONS = {
    "memory", "timeout", "env_file", "pass_env", "spares", "max_calls", "max_queue",
    "max_queue_mb", "max_request_mb", "max_response_mb", "function_version", "token",
    "tmp_mb", "max_pids", "no_network", "address_space_mb",
}
# Options only the server decides, whatever the file says per function.
SERVER_ONLY_OPTIONS = {"dir", "instances", "entrypoint", "config", "check", "reload"}
DEFAULT_MAX_INSTANCES = 16
DEFAULT_FUNCTION_MAX_INSTANCES = 4
DEFAULT_IDLE_TIMEOUT_S = 300.0
# Of the machine's memory, what the live instances may take together by default.
DEFAULT_MEMORY_SHARE = 0.75
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class ConfigFileError(Exception):
    """The file is wrong; str() is the one line to show."""


@dataclass(frozen=True)
class HostConfig:
    """What `--config` describes: the server, its budgets and its functions."""

    path: Path
    server: Config  # the server's own options (its entrypoint and code root mean nothing)
    max_instances: int
    max_memory_mb: int
    functions: dict[str, FunctionSettings] = field(default_factory=dict)
    command_line: list[str] = field(default_factory=list)  # options that win over [server]


def load(path: Path, command_line: list[str]) -> HostConfig:
    """Read and check the file; `command_line` options win over its [server] table."""
    from supervisor import cli

    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigFileError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    _only_keys(path, "", document, {"server", "functions"})
    server_table = _table(path, "server", document.get("server", {}))
    functions = _table(path, "functions", document.get("functions", {}))
    if not functions:
        raise ConfigFileError(f"{path}: functions: no function is defined ([functions.NAME])")
    host_values = {key: server_table.pop(key) for key in HOST_KEYS if key in server_table}
    server_tokens = _tokens(path, "server", server_table)
    base = path.parent.resolve()
    settings = {name: _function(path, base, name, _table(path, f"functions.{name}", table),
                                [*server_tokens, *command_line])
                for name, table in functions.items()}
    server = cli.checked(path, "server", [*server_tokens, *command_line, "--dir", str(base),
                                          "--instances", "1", "config.handler"],
                         need_entry=False)
    return HostConfig(path, server, *_budgets(path, host_values), functions=settings,
                      command_line=command_line)


def _function(path: Path, base: Path, name: str, table: dict[str, Any],
              shared: list[str]) -> FunctionSettings:
    from supervisor import cli

    where = f"functions.{name}"
    if not _NAME.fullmatch(name):
        raise ConfigFileError(f"{path}: {where}: a function name is 1-63 characters of a-z, "
                              "0-9 and '-', starting with a letter or digit (it is a URL path)")
    _only_keys(path, where, table, FUNCTION_ONLY_KEYS | FUNCTION_OPTIONS)
    for key in ("dir", "entry"):
        if key not in table:
            raise ConfigFileError(f"{path}: {where}.{key}: required")
    own = {key: value for key, value in table.items() if key in FUNCTION_OPTIONS}
    env = _table(path, f"{where}.env", table.get("env", {}))
    tokens = [*_tokens(path, where, own),
              *(f"--env={key}={_text(path, f'{where}.env.{key}', v)}" for key, v in env.items())]
    max_instances = _integer(path, f"{where}.max_instances",
                             table.get("max_instances", DEFAULT_FUNCTION_MAX_INSTANCES), 1)
    code_root = base / _text(path, f"{where}.dir", table["dir"])
    config = cli.checked(path, where, [*shared, *tokens, "--dir", str(code_root),
                                       "--instances", str(max_instances), "--spares",
                                       str(own.get("spares", 0)), "--function-name", name,
                                       _text(path, f"{where}.entry", table["entry"])])
    min_instances = _integer(path, f"{where}.min_instances", table.get("min_instances", 0), 0)
    if min_instances > max_instances:
        raise ConfigFileError(f"{path}: {where}.min_instances: {min_instances} is more than "
                              f"max_instances ({max_instances})")
    idle_timeout = table.get("idle_timeout", DEFAULT_IDLE_TIMEOUT_S)
    if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, int | float) \
            or idle_timeout <= 0:
        raise ConfigFileError(f"{path}: {where}.idle_timeout: must be a number of seconds "
                              f"above 0, got {idle_timeout!r}")
    python = _interpreter(path, base, where, table.get("python"))
    return FunctionSettings(name, config, True, min_instances, float(idle_timeout), python)


def _interpreter(path: Path, base: Path, where: str, value: Any) -> str:
    if value is None:
        return sys.executable
    interpreter = base / _text(path, f"{where}.python", value)
    if not os.access(interpreter, os.X_OK) or interpreter.is_dir():
        raise ConfigFileError(f"{path}: {where}.python: {interpreter} is not an executable "
                              "interpreter")
    problem = _worker_cannot_run(str(interpreter))
    if problem:
        raise ConfigFileError(f"{path}: {where}.python: {interpreter} {problem}")
    return str(interpreter)


def _worker_cannot_run(python: str) -> str | None:
    """What keeps `python` from running the runtime's worker (it brings only its own package:
    the interpreter needs Python 3.11+ and msgpack), or None."""
    try:
        done = subprocess.run([python, "-P", "-c", _WORKER_NEEDS], capture_output=True,
                              text=True, timeout=INTERPRETER_CHECK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"does not run: {exc}"
    if done.returncode == 0:
        return None
    if "msgpack" in done.stderr:
        return f"lacks msgpack, which the worker needs: run `{python} -m pip install msgpack`"
    return f"cannot run the worker: {done.stderr.strip().splitlines()[-1:] or done.returncode}"



def _budgets(path: Path, values: dict[str, Any]) -> tuple[int, int]:
    default_memory_mb = int(psutil.virtual_memory().total * DEFAULT_MEMORY_SHARE) >> 20
    max_instances = _integer(path, "server.max_instances",
                             values.get("max_instances", DEFAULT_MAX_INSTANCES), 1)
    max_memory_mb = _integer(path, "server.max_memory_mb",
                             values.get("max_memory_mb", default_memory_mb), 1)
    return max_instances, max_memory_mb


def _tokens(path: Path, where: str, table: dict[str, Any]) -> list[str]:
    """Command-line tokens for a table of options: `port = 8080` is `--port=8080`."""
    tokens = []
    for key, value in table.items():
        if key in SERVER_ONLY_OPTIONS:
            raise ConfigFileError(f"{path}: {where}.{key}: not allowed in the file "
                                  "(each function's table says where its code is)")
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            tokens.append(f"{flag}={'yes' if value else 'no'}")
        elif isinstance(value, list):
            tokens.extend(f"{flag}={_text(path, f'{where}.{key}', item)}" for item in value)
        elif isinstance(value, int | float | str):
            tokens.append(f"{flag}={value}")
        else:
            raise ConfigFileError(f"{path}: {where}.{key}: expected a number, text, true/false "
                                  f"or a list, got {type(value).__name__}")
    return tokens


def _only_keys(path: Path, where: str, table: dict[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigFileError(f"{path}: {prefix}{key}: unknown key (allowed: "
                                  f"{', '.join(sorted(allowed))})")


def _table(path: Path, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigFileError(f"{path}: {where}: expected a table, got {type(value).__name__}")
    return dict(value)


def _text(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ConfigFileError(f"{path}: {where}: expected text, got {value!r}")
    return str(value)


def _integer(path: Path, where: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigFileError(f"{path}: {where}: expected a whole number of at least {low}, "
                              f"got {value!r}")
    return value


def summary(host: HostConfig) -> str:
    """What --check prints: the file is good, and what it would serve."""
    lines = [f"{host.path}: ok: {len(host.functions)} function(s) on "
             f"http://{host.server.host}:{host.server.port}, at most {host.max_instances} "
             f"instance(s) and {host.max_memory_mb} MB together"]
    for name, function in sorted(host.functions.items()):
        config = function.config
        lines.append(f"  /{name}: {config.entrypoint} in {config.code_root}, "
                     f"{function.min_instances}-{config.instances} instance(s) of "
                     f"{config.memory_mb} MB, timeout {config.timeout_s:g} s, idle "
                     f"{function.idle_timeout_s:g} s, python {function.python}")
    return "\n".join(lines)


def pid_file(path: Path) -> Path:
    """Where a supervisor serving the file `path` keeps its pid, for `sfsupervisor reload`."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"sfsupervisor-{digest}.pid"
