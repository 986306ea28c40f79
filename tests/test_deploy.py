"""The container image and Kubernetes files (Dockerfile, .dockerignore, deploy/kubernetes/) are
valid, agree with each other and with the real `sfsupervisor` command.

There is no Docker engine on the development machine, so the image is never built here. What
can be checked honestly is checked: the Dockerfile's instructions (parsed by a small parser
below), that .dockerignore keeps what its COPY lines need, and — against a real sfsupervisor
started with the image's ENV and CMD, the Deployment's env and the function the image copies —
the HEALTHCHECK's exact command, the probes' paths and the metrics the autoscaler queries.

The Kubernetes manifests are validated with kubernetes-validate's bundled schemas (strict: no
unknown fields) at pinned Kubernetes versions; KEDA's ScaledObject (a CRD, not in those
schemas) is checked field by field. The consistency checks derive their expectations from the
files and from `python -m supervisor --help`, so a renamed option, a changed port or a shorter
grace period fails a test.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_helpers import Launch, Supervisor, free_port, scrape_metrics

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes most managed clusters still run, and the newest kubernetes-validate has.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Kinds whose schemas kubernetes-validate does not have; each is checked by a test of its own.
NOT_IN_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"),
                  ("kustomize.config.k8s.io/v1beta1", "Kustomization")}
# After --graceful-timeout, sfsupervisor answers what is left with 503, closes its connections
# and stops its workers (SIGTERM, SIGKILL, reaping: about 2 s at most): allow this much on top.
SHUTDOWN_SLACK_S = 5
# The supervisor process's own memory, beyond its instances (README: ~35 MB RSS).
SUPERVISOR_OVERHEAD_MIB = 40
HEALTHCHECK_TIMEOUT_S = 10
MIB = 1024 * 1024
QUANTITY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                  "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
COPY_FLAG = re.compile(r"--[a-z-]+(=\S*)?$")


def _require_kubernetes_validate() -> Any:
    """The kubernetes_validate module; a missing one fails in CI and skips elsewhere."""
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("kubernetes-validate is not installed; CI must install the test extra")
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return kubernetes_validate


# -- the Dockerfile --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case), its arguments, its first line."""

    keyword: str
    arguments: str
    line: int


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """The instructions of each build stage, in order (comments dropped, continuations joined).

    Enough of the Dockerfile syntax for this repository's file: `#` comment lines (parser
    directives included), `\\` line continuations, blank lines, one instruction per logical line.
    """
    stages: list[list[Instruction]] = []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        pending = ""
        instruction = Instruction(keyword.upper(), arguments.strip(), start)
        if instruction.keyword == "FROM":
            stages.append([])
        elif not stages:
            continue  # ARG before the first FROM
        stages[-1].append(instruction)
    assert not pending, "the Dockerfile ends inside a continued line"
    return stages


@functools.cache
def dockerfile_stages() -> tuple[tuple[Instruction, ...], ...]:
    return tuple(tuple(stage) for stage in parse_dockerfile(DOCKERFILE.read_text()))


def final_stage() -> tuple[Instruction, ...]:
    return dockerfile_stages()[-1]


def only(stage: tuple[Instruction, ...], keyword: str) -> Instruction:
    """The stage's last instruction `keyword` (the one in effect); fails if there is none."""
    found = [instruction for instruction in stage if instruction.keyword == keyword]
    assert found, f"no {keyword} in the Dockerfile's stage"
    return found[-1]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) argument list; fails on the shell form."""
    assert arguments.startswith("["), f"not exec form (a shell would be PID 1): {arguments}"
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), arguments
    return value


def image_env() -> dict[str, str]:
    """The final stage's ENV settings (KEY=VALUE form)."""
    env: dict[str, str] = {}
    for instruction in final_stage():
        if instruction.keyword == "ENV":
            for item in shlex.split(instruction.arguments):
                key, equals, value = item.partition("=")
                assert equals, f"ENV {instruction.arguments!r}: use the KEY=VALUE form"
                env[key] = value
    return env


def copy_parts(instruction: Instruction) -> tuple[list[str], list[str], str]:
    """(flags, sources, destination) of a COPY instruction."""
    words = shlex.split(instruction.arguments)
    flags = [word for word in words if COPY_FLAG.match(word)]
    paths = [word for word in words if not COPY_FLAG.match(word)]
    return flags, paths[:-1], paths[-1]


def context_copies(stage: tuple[Instruction, ...]) -> list[tuple[list[str], str]]:
    """(sources, destination) of the stage's COPY instructions from the build context."""
    copies = []
    for instruction in stage:
        if instruction.keyword == "COPY":
            flags, sources, destination = copy_parts(instruction)
            if not any(flag.startswith("--from") for flag in flags):
                copies.append((sources, destination))
    return copies


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's CMD, as the exec-form argument list."""
    _, cmd, command = only(final_stage(), "HEALTHCHECK").arguments.partition("CMD ")
    assert cmd, "HEALTHCHECK without CMD"
    return exec_form(command.strip())


def user_ids() -> tuple[int, int]:
    """The final USER as (uid, gid); fails unless it is numeric."""
    user, _, group = only(final_stage(), "USER").arguments.partition(":")
    assert user.isdigit() and group.isdigit(), (
        f"USER {user}:{group} should be numeric, so that runAsNonRoot can check it")
    return int(user), int(group)


def default_code_root() -> Path:
    """The repository directory the image copies to its code root (SFSUPERVISOR_DIR)."""
    code_root = image_env()["SFSUPERVISOR_DIR"].rstrip("/")
    for sources, destination in context_copies(final_stage()):
        if destination.rstrip("/") == code_root:
            assert len(sources) == 1, sources
            return REPO_ROOT / sources[0]
    raise AssertionError(f"nothing is copied to the code root {code_root}")


# -- .dockerignore ---------------------------------------------------------------------------------

def dockerignore_rules() -> list[tuple[re.Pattern[str], bool]]:
    """(pattern, excludes) per .dockerignore line; `!` lines include again."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((_pattern_regex(line.removeprefix("!").strip("/")), not negated))
    return rules


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `**` any number of directories, `*` and `?` within one."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def in_build_context(relative: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Whether .dockerignore lets the file in: the last rule matching it or a parent decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    excluded = False
    for regex, excludes in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = excludes
    return not excluded


def context_files() -> set[str]:
    """Every repository file (relative, with /) that .dockerignore lets into the context."""
    rules = dockerignore_rules()
    return {path.relative_to(REPO_ROOT).as_posix() for path in REPO_ROOT.rglob("*")
            if path.is_file() and in_build_context(path.relative_to(REPO_ROOT).as_posix(), rules)}


# -- the Kubernetes files ----------------------------------------------------------------------

@functools.cache
def manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) of every YAML document under deploy/kubernetes/."""
    found = []
    for path in sorted(KUBERNETES_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path.name, document))
    return tuple(found)


def manifest(kind: str) -> dict[str, Any]:
    """The one document of `kind`."""
    found = [document for _, document in manifests() if document["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} documents in {KUBERNETES_DIR}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    return manifest("Deployment")["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1, "one container per pod: sfsupervisor"
    return containers[0]


def pod_env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in container().get("env", [])}


def container_port() -> int:
    ports = container()["ports"]
    assert len(ports) == 1, ports
    return ports[0]["containerPort"]


def resolve_port(port: int | str) -> int:
    """A port number, or the name of one of the container's ports, as a number."""
    if isinstance(port, int):
        return port
    named = {item.get("name"): item["containerPort"] for item in container()["ports"]}
    assert port in named, f"no container port named {port!r}"
    return named[port]


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity such as 768Mi or 1G, in bytes (integers and suffixes only)."""
    match = re.fullmatch(r"(\d+)([KMGT]i|[kMGT]|)", str(text))
    assert match, f"unsupported quantity {text!r}"
    return int(match[1]) * QUANTITY_UNITS[match[2]]


def prestop_seconds() -> float:
    """How long the container's preStop hook holds off SIGTERM."""
    hook = container()["lifecycle"]["preStop"]
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"unknown preStop hook {command}"
    return float(command[1])


# -- the real command's options ----------------------------------------------------------------

@dataclass(frozen=True)
class CliOption:
    flags: tuple[str, ...]
    env: str | None
    default: str | None


@functools.cache
def help_text() -> str:
    """`python -m supervisor --help`, uninfluenced by our environment's settings."""
    env = {key: value for key, value in os.environ.items()
           if key != "PORT" and not key.startswith("SFSUPERVISOR_")}
    env["COLUMNS"] = "200"
    done = subprocess.run([sys.executable, "-m", "supervisor", "--help"], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@functools.cache
def cli_options() -> dict[str, CliOption]:
    """Every --flag that `--help` lists, with its SFSUPERVISOR_ variable and default."""
    options_part = help_text().split("\noptions:\n", 1)[1]
    found = {}
    for block in re.split(r"\n(?=  -)", options_part):
        head = block.strip().split("  ", 1)[0]
        flags = tuple(re.findall(r"--[a-z][a-z0-9-]*", head))
        env = re.search(r"\(env\s+(SFSUPERVISOR_\w+)\)", block)
        default = re.search(r"\(default:\s+([^)]*)\)", block)
        option = CliOption(flags, env[1] if env else None, default[1] if default else None)
        found.update((flag, option) for flag in flags)
    return found


def cli_env_variables() -> set[str]:
    """Every SFSUPERVISOR_ variable `--help` names (the entry point's included)."""
    return set(re.findall(r"\(env\s+(SFSUPERVISOR_\w+)\)", help_text()))


def flags_in(arguments: list[str]) -> list[str]:
    return [argument.split("=", 1)[0] for argument in arguments if argument.startswith("--")]


def flag_value(arguments: list[str], flag: str) -> str | None:
    """The value given to `flag` in an argument list (`--flag value` or `--flag=value`)."""
    for index, argument in enumerate(arguments):
        if argument == flag and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith(flag + "="):
            return argument.split("=", 1)[1]
    return None


def container_arguments() -> list[str]:
    """What the container runs after `sfsupervisor`: the image's, unless the pod replaces it."""
    assert "command" not in container(), "the Deployment must keep the image's ENTRYPOINT"
    entrypoint = exec_form(only(final_stage(), "ENTRYPOINT").arguments)
    arguments = container().get("args", exec_form(only(final_stage(), "CMD").arguments))
    return entrypoint[1:] + list(arguments)


def effective_setting(flag: str, arguments: list[str], env: dict[str, str]) -> str:
    """An option's value as sfsupervisor resolves it: command line, its variable, default."""
    given = flag_value(arguments, flag)
    if given is not None:
        return given
    option = cli_options()[flag]
    if option.env is not None and option.env in env:
        return env[option.env]
    if flag == "--port" and "PORT" in env:
        return env["PORT"]
    assert option.default is not None, f"{flag} has no default"
    return option.default


def pod_setting(flag: str) -> str:
    """An option's value in the Deployment's container (image ENV, then pod env, args)."""
    return effective_setting(flag, container_arguments(), {**image_env(), **pod_env()})


# -- the Dockerfile --------------------------------------------------------------------------------

def test_dockerfile_builds_from_python_slim_in_stages() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    assert all(stage[0].arguments.split()[0] == "${PYTHON_IMAGE}" for stage in dockerfile_stages())
    build_runs = [i.arguments for i in dockerfile_stages()[0] if i.keyword == "RUN"]
    assert any(re.search(r"pip install --no-cache-dir \.$", run) for run in build_runs)


def test_dockerfile_runs_as_an_unprivileged_user() -> None:
    uid, gid = user_ids()
    assert uid != 0 and gid != 0
    runs = " ".join(i.arguments for i in final_stage() if i.keyword == "RUN")
    assert f"--uid {uid}" in runs and f"--gid {gid}" in runs, "the USER is not created"


def test_dockerfile_runs_sfsupervisor_as_pid_1() -> None:
    entrypoint = exec_form(only(final_stage(), "ENTRYPOINT").arguments)
    assert entrypoint[0] == "sfsupervisor"
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "sfsupervisor" in scripts, "the ENTRYPOINT is not a console script of the project"
    command = exec_form(only(final_stage(), "CMD").arguments)
    assert set(flags_in(command)) <= set(cli_options()), command
    assert not any(i.keyword == "SHELL" for i in final_stage())
    assert only(final_stage(), "STOPSIGNAL").arguments == "SIGTERM"


def test_dockerfile_listens_on_all_addresses_of_the_exposed_port() -> None:
    arguments = exec_form(only(final_stage(), "ENTRYPOINT").arguments)[1:] + exec_form(
        only(final_stage(), "CMD").arguments)
    assert effective_setting("--host", arguments, image_env()) == "0.0.0.0"
    port = effective_setting("--port", arguments, image_env())
    assert only(final_stage(), "EXPOSE").arguments.removesuffix("/tcp") == port


def test_dockerfile_env_names_real_options() -> None:
    names = {name for name in image_env() if name.startswith("SFSUPERVISOR_")}
    assert names and names <= cli_env_variables(), names - cli_env_variables()


def test_dockerfile_copies_the_default_function_to_the_code_root() -> None:
    command = exec_form(only(final_stage(), "CMD").arguments)
    module = command[-1].rpartition(".")[0]
    assert (default_code_root() / f"{module}.py").is_file()
    assert only(final_stage(), "WORKDIR").arguments == image_env()["SFSUPERVISOR_DIR"]


def test_dockerfile_healthcheck_is_python_on_healthz() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"] and len(command) == 3
    assert "/healthz" in command[2]


def test_build_stage_copies_what_the_package_is_built_from() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {path.parent.name for path in REPO_ROOT.glob("*/__init__.py")
                if any(re.fullmatch(pattern.replace("*", ".*"), path.parent.name)
                       for pattern in include)}
    needed = {"pyproject.toml", "setup.py", project["project"]["readme"], *packages}
    copied = {source.rstrip("/") for sources, _ in context_copies(dockerfile_stages()[0])
              for source in sources}
    assert packages and needed <= copied, f"the build stage does not copy {needed - copied}"


def test_dockerignore_keeps_every_copy_source_and_nothing_else() -> None:
    files = context_files()
    sources = {source.rstrip("/") for stage in dockerfile_stages()
               for sources, _ in context_copies(stage) for source in sources}
    for source in sources:
        assert any(f == source or f.startswith(source + "/") for f in files), \
            f".dockerignore leaves {source} out of the build context"
    for source in ("supervisor", "worker"):
        tracked = {path.relative_to(REPO_ROOT).as_posix()
                   for path in (REPO_ROOT / source).glob("*.py")}
        assert tracked <= files, tracked - files
    for left_out in (".git", "tests", "benchmarks", "deploy"):
        assert not any(f.startswith(left_out + "/") for f in files), left_out
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)


# -- the Kubernetes manifests: schemas ------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(version: str) -> None:
    kubernetes_validate = _require_kubernetes_validate()
    validated = 0
    for name, document in manifests():
        if (document["apiVersion"], document["kind"]) in NOT_IN_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(item) for item in error.path)
            pytest.fail(f"{name}: {document['kind']} at {path}: {error.message}", pytrace=False)
        validated += 1
    assert validated >= 4  # Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget


def test_schema_validation_catches_a_misspelt_field() -> None:
    """The validation above is strict: a typo in a field name fails it (a control)."""
    kubernetes_validate = _require_kubernetes_validate()
    broken = copy.deepcopy(manifest("Deployment"))
    probe = broken["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = probe
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_keda_scaled_object_scales_the_deployment_on_calls_in_progress() -> None:
    scaled = manifest("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["metadata"]["name"]
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == manifest("Deployment")["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    # KEDA's trigger metadata is a map of strings: a YAML number there is rejected.
    assert all(isinstance(value, str) for value in metadata.values()), metadata
    assert re.match(r"https?://\S+$", metadata["serverAddress"])
    selectors = query_selectors(metadata["query"])
    assert {name for name, _ in selectors} == {"sfsupervisor_queue_length",
                                               "sfsupervisor_instances"}
    assert all(labels.get("function") == pod_setting("--function-name")
               for _, labels in selectors), selectors
    threshold = float(metadata["threshold"])
    # Each pod is asked to carry at most its instances: scale out before calls queue.
    assert 0 < threshold <= int(pod_setting("--instances"))


def query_selectors(query: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, label matchers) of each sfsupervisor series a PromQL query selects."""
    selectors = []
    for name, matchers in re.findall(r"(sfsupervisor_\w+)\{([^}]*)\}", query):
        selectors.append((name, dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers))))
    return selectors


def test_kustomization_lists_the_core_files_and_one_autoscaler() -> None:
    kustomization = manifest("Kustomization")
    resources = kustomization["resources"]
    assert all((KUBERNETES_DIR / resource).is_file() for resource in resources)
    kinds = [document["kind"] for name, document in manifests() if name in resources]
    assert {"Deployment", "Service"} <= set(kinds)
    autoscalers = [kind for kind in kinds if kind in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert len(autoscalers) == 1, f"two autoscalers on one Deployment fight: {autoscalers}"
    (image,) = kustomization["images"]
    assert container()["image"].split(":")[0] == image["name"]


def test_autoscalers_target_the_deployment_which_leaves_replicas_to_them() -> None:
    deployment = manifest("Deployment")
    target = manifest("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "re-applying would reset the autoscaler's count"
    cpu_request = container()["resources"]["requests"]["cpu"]
    assert cpu_request, "CPU utilization is measured against the request"


# -- the Kubernetes manifests: consistency --------------------------------------------------------

def test_termination_grace_outlasts_prestop_and_graceful_timeout() -> None:
    grace = pod_spec()["terminationGracePeriodSeconds"]
    graceful_timeout = float(pod_env()["SFSUPERVISOR_GRACEFUL_TIMEOUT"])
    assert grace > prestop_seconds() + graceful_timeout + SHUTDOWN_SLACK_S, (
        f"terminationGracePeriodSeconds {grace} <= preStop {prestop_seconds()} + "
        f"--graceful-timeout {graceful_timeout} + {SHUTDOWN_SLACK_S} s to stop")
    # A call accepted before SIGTERM waits up to --timeout for an instance, then runs up to
    # --timeout: the drain must allow both.
    assert graceful_timeout >= 2 * float(pod_setting("--timeout"))


def test_probes_ask_the_health_paths_on_the_container_port() -> None:
    readiness = container()["readinessProbe"]["httpGet"]
    liveness = container()["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz" and liveness["path"] == "/healthz"
    for probe in (readiness, liveness):
        assert resolve_port(probe["port"]) == container_port()
        assert probe.get("scheme", "HTTP") == "HTTP"
    for name in ("readinessProbe", "livenessProbe"):
        probe = container()[name]
        assert probe["timeoutSeconds"] < probe["periodSeconds"]
        assert probe["failureThreshold"] >= 2


def test_container_port_is_the_one_sfsupervisor_listens_on() -> None:
    assert int(pod_setting("--port")) == container_port()
    assert pod_setting("--host") == "0.0.0.0"
    assert only(final_stage(), "EXPOSE").arguments.removesuffix("/tcp") == str(container_port())
    annotations = manifest("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(container_port())
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_and_budget_select_the_pods_and_reach_the_container_port() -> None:
    deployment = manifest("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = manifest("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert resolve_port(port["targetPort"]) == container_port()
    budget = manifest("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_deployment_sets_only_options_sfsupervisor_has() -> None:
    names = {name for name in pod_env() if name.startswith("SFSUPERVISOR_")}
    assert names <= cli_env_variables(), f"unknown options: {names - cli_env_variables()}"
    assert "SFSUPERVISOR_GRACEFUL_TIMEOUT" in names
    assert set(flags_in(container_arguments())) <= set(cli_options())


def test_memory_limit_holds_every_instance_and_the_supervisor() -> None:
    resources = container()["resources"]
    limit = parse_quantity(resources["limits"]["memory"])
    assert parse_quantity(resources["requests"]["memory"]) == limit
    instances = int(pod_setting("--instances")) + int(pod_setting("--spares"))
    needed_mib = instances * int(pod_setting("--memory")) + SUPERVISOR_OVERHEAD_MIB
    assert limit >= needed_mib * MIB, f"{limit / MIB:g} MiB < {needed_mib} MiB"


def test_pod_is_locked_down() -> None:
    uid, gid = user_ids()
    pod_security = pod_spec()["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (uid, gid)
    security = container()["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "the function's scratch space"
    assert pod_spec()["automountServiceAccountToken"] is False


def test_service_links_are_off_since_they_would_stop_sfsupervisor() -> None:
    """Kubernetes injects <SERVICE>_PORT=tcp://ip:port for every Service of the namespace: for
    a Service named sfsupervisor that is SFSUPERVISOR_PORT, which the real command rejects."""
    service = manifest("Service")
    prefix = service["metadata"]["name"].upper().replace("-", "_")
    port = service["spec"]["ports"][0]["port"]
    injected = {f"{prefix}_SERVICE_HOST": "10.96.0.10", f"{prefix}_SERVICE_PORT": str(port),
                f"{prefix}_PORT": f"tcp://10.96.0.10:{port}",
                f"{prefix}_PORT_{port}_TCP_PORT": str(port)}
    env = {key: value for key, value in os.environ.items()
           if key != "PORT" and not key.startswith("SFSUPERVISOR_")}
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "--dir", str(default_code_root()), "index.handler"],
        env={**env, **injected}, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and f"{prefix}_PORT" in done.stderr, done.stderr
    assert pod_spec()["enableServiceLinks"] is False


# -- against a real sfsupervisor configured as the image and the Deployment configure it ------

@pytest.fixture(scope="module")
def pod_like(launch_module_supervisor: Launch) -> Supervisor:
    """sfsupervisor with the image's ENV and CMD and the Deployment's env, serving the function
    the image copies; only the address differs (loopback and a free port)."""
    env = {key: value for key, value in {**image_env(), **pod_env()}.items()
           if key.startswith(("SFSUPERVISOR_", "PYTHON"))}
    *options, entrypoint = container_arguments()
    return launch_module_supervisor(entrypoint, *options, code_root=default_code_root(),
                                    extra_env=env)


def test_pod_configuration_serves_the_default_function(pod_like: Supervisor) -> None:
    response = pod_like.request("GET", "/", params={"name": "deploy"})
    assert response.status_code == 200, response.text
    assert response.json()["message"] == "Hello, deploy!"


def test_probe_paths_answer_200(pod_like: Supervisor) -> None:
    for name in ("readinessProbe", "livenessProbe"):
        path = container()[name]["httpGet"]["path"]
        response = pod_like.request("GET", path)
        assert response.status_code == 200, f"{name} {path}: {response.status_code}"


def test_autoscaler_query_selects_series_the_pods_serve(pod_like: Supervisor) -> None:
    annotations = manifest("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"  # what scrape_metrics reads
    scrape = scrape_metrics(pod_like)
    query = manifest("ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    for name, labels in query_selectors(query):
        matching = [have for sample, have in scrape.samples
                    if sample == name and set(labels.items()) <= have]
        assert matching, f"/metrics has no {name} with {labels}"


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK's exact command (the host's Python for the image's), in an environment
    made of the image's ENV and `env`."""
    command = healthcheck_command()
    base = {"PATH": os.environ["PATH"]}
    image = {key: value for key, value in image_env().items() if key != "PATH"}
    return subprocess.run([sys.executable, *command[1:]], env={**base, **image, **env},
                          capture_output=True, text=True, timeout=HEALTHCHECK_TIMEOUT_S,
                          check=False)


@pytest.mark.parametrize("port_variable", ["PORT", "SFSUPERVISOR_PORT"])
def test_healthcheck_passes_against_a_running_supervisor(pod_like: Supervisor,
                                                         port_variable: str) -> None:
    started = time.monotonic()
    done = run_healthcheck({port_variable: str(pod_like.port)})
    assert done.returncode == 0, done.stderr
    timeout = re.search(r"--timeout=(\d+)s", only(final_stage(), "HEALTHCHECK").arguments)
    assert timeout and time.monotonic() - started < int(timeout[1])


def test_healthcheck_ignores_proxy_settings(pod_like: Supervisor) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    done = run_healthcheck({"PORT": str(pod_like.port), "HTTP_PROXY": closed,
                            "http_proxy": closed})
    assert done.returncode == 0, done.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    done = run_healthcheck({"PORT": str(free_port())})
    assert done.returncode != 0
    assert "Connection refused" in done.stderr, done.stderr
