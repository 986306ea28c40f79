# syntax=docker/dockerfile:1
#
# The sfsupervisor container image: the runtime, with examples/hello as the default function.
#
#   docker build -t sfsupervisor .
#   docker run --rm -p 8080:8080 sfsupervisor
#   curl 'http://127.0.0.1:8080/?name=container'
#
# YOUR FUNCTION. The code root is /function and the entry point is the command's argument
# (default index.handler). Either build a derived image (the usual way: code and dependencies
# are versioned together):
#
#   FROM sfsupervisor
#   USER 0
#   COPY requirements.txt /tmp/requirements.txt
#   RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
#   COPY . /function/
#   # The runtime user cannot write __pycache__ there: compile now for faster cold starts.
#   RUN python -m compileall -q /function
#   USER 10001:10001
#   CMD ["main.handler"]
#
# or mount your code over the default (quick local runs):
#
#   docker run --rm -p 8080:8080 -v "$PWD:/function:ro" sfsupervisor main.handler
#
# OPTIONS: append them to the command (`docker run … sfsupervisor --instances 8 main.handler`)
# or set SFSUPERVISOR_<OPTION> variables (`-e SFSUPERVISOR_INSTANCES=8`). Change the port with
# $PORT or SFSUPERVISOR_PORT rather than --port, so that the HEALTHCHECK below follows it.
#
# USER. The image runs as the unprivileged uid 10001; the memory limit of each instance is then
# enforced by the supervisor's watchdog. A root container (`--user 0`) with CAP_SYS_ADMIN (or
# --privileged) gets the stronger per-instance sandbox, and with a writable cgroup a memory
# cgroup per instance (see deploy/README.md). Those rights also widen what the container may do
# to its host: grant them where isolating one function call from another is worth that.
#
# Not built by the test suite: the development machine has no Docker engine. tests/test_deploy.py
# checks this file's instructions and .dockerignore, and runs this HEALTHCHECK's exact command
# and this image's default command (with its ENV) against a real sfsupervisor.

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: the project and its dependencies, installed into a virtualenv -----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the supervisor's compiled modules (setup.py); the runtime stage needs none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY supervisor/ supervisor/
COPY worker/ worker/
RUN /opt/venv/bin/pip install --no-cache-dir .

# -- runtime: the virtualenv, the default function, an unprivileged user -------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SFSUPERVISOR_HOST=0.0.0.0 \
    SFSUPERVISOR_DIR=/function
RUN groupadd --system --gid 10001 sfsupervisor \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sfsupervisor
COPY --from=build /opt/venv /opt/venv
COPY examples/hello/ /function/
WORKDIR /function
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# sfsupervisor drains on SIGTERM: calls in flight finish (--graceful-timeout), then it exits 0.
STOPSIGNAL SIGTERM
# Liveness only (/healthz); no curl in -slim, so Python's urllib, ignoring any HTTP(S)_PROXY.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; port = os.environ.get('SFSUPERVISOR_PORT') or os.environ.get('PORT') or '8080'; r.build_opener(r.ProxyHandler({})).open(f'http://127.0.0.1:{port}/healthz', timeout=2)"]
# PID 1 is sfsupervisor itself (exec form, no shell): it receives SIGTERM, reaps orphans (it is a
# subreaper anyway) and its workers die with it.
ENTRYPOINT ["sfsupervisor"]
CMD ["index.handler"]
