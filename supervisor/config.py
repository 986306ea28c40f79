"""The supervisor's settings, fixed at start."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1024 * 1024
# The platform limits the request and the response JSON to 3.5 MB each.
PLATFORM_BODY_LIMIT_BYTES = int(3.5 * MB)
# Variables the supervisor reads for itself; a worker never sees them.
ENV_PREFIX = "SFSUPERVISOR_"
# --log-level's choices, least severe first.
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Config:
    """Everything the supervisor needs to serve one function."""

    entrypoint: str
    code_root: Path
    instances: int = 1
    host: str = "127.0.0.1"
    port: int = 8080
    timeout_s: float = 5.0
    memory_mb: int = 128
    function_name: str = ""
    function_version: str = "$latest"
    env: dict[str, str] = field(default_factory=dict)
    token: dict[str, Any] | None = None
    log_format: str = "text"
    log_level: str = "info"
    max_request_bytes: int = PLATFORM_BODY_LIMIT_BYTES
    max_response_bytes: int = PLATFORM_BODY_LIMIT_BYTES
    spares: int = 1
    max_queue: int = 256
    max_queue_bytes: int = 64 * MB
    unhealthy_after_s: float = 30.0
    graceful_timeout_s: float = 30.0
    read_timeout_s: float = 10.0
    max_calls: int = 0
    memory_enforcement: str = "auto"
    address_space_mb: int = 0
    sandbox: str = "auto"
    sandbox_uids: tuple[int, int] = (20000, 29999)
    pass_env: tuple[str, ...] = ()
    no_network: bool = False
    tmp_mb: int = 512
    max_pids: int = 512
    reload: bool = False

    def function_environment(self, instance: dict[str, str]) -> dict[str, str]:
        """What the function finds in os.environ: a minimal base, the instance's own HOME and
        TMPDIR, what --pass-env names, --env-file and --env, and the platform's variables.
        Never the rest of the supervisor's environment: it may hold the host's secrets."""
        passed = {name: os.environ[name] for name in self.pass_env if name in os.environ}
        return {
            "PATH": default_path(),
            "LANG": "C.UTF-8",
            "TZ": "UTC",
            **instance,
            **passed,
            **self.env,
            "_HANDLER": self.entrypoint,
            "LAMBDA_TASK_ROOT": str(self.code_root),
        }

    def worker_limits(self, measure_peak: bool) -> dict[str, Any]:
        """The limits a worker applies to itself (the INIT frame's last field)."""
        return {
            "max_response_bytes": self.max_response_bytes,
            "address_space_bytes": self.address_space_mb * MB or None,
            "measure_peak": measure_peak,
        }

    def static_context(self) -> dict[str, Any]:
        """The context fields that are the same for every call."""
        return {
            "function_name": self.function_name,
            "function_version": self.function_version,
            "invoked_function_arn": self.function_name,
            "memory_limit_in_mb": self.memory_mb,
            "log_group_name": "default",
            "log_stream_name": self.function_version,
            "token": self.token,
        }


def default_path() -> str:
    """The interpreter's own directory (a virtualenv's bin), then the usual system ones."""
    return ":".join([os.path.dirname(sys.executable), "/usr/local/sbin", "/usr/local/bin",
                     "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


@dataclass(frozen=True)
class FunctionSettings:
    """One served function: its Config (`instances` is its concurrency) and how it scales.

    A fixed pool (single-function mode) keeps instances + spares initialized; an elastic one
    (--config) starts instances as calls need them, within the host's budget, and retires
    those idle for idle_timeout_s down to min_instances.
    """

    name: str
    config: Config
    elastic: bool = False
    min_instances: int = 0
    idle_timeout_s: float = 300.0
    python: str = sys.executable
