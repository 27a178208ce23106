"""Calling an engine's CLI (`docker`, `podman`): its environment, its specs, its answers.

Everything is driven through the engine's CLI, spawned by the injected `ProcessRunner`
(why the CLI, and where the API socket instead: docs/backends-containers.md, "The engine
client").
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import time
from collections.abc import Mapping
from typing import Any

import attrs
from returns.result import Failure, Result

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.oci.env_file import env_file_hook
from mechasandbox.backends.oci.portal import Portal
from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.domain.events import OutputSink
from mechasandbox.domain.request import StreamedInput
from mechasandbox.runner.proctree import pid_exists
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec

# Host variables the engine CLI itself needs (where the engine is, its config and
# credentials). The CLI gets these and nothing else, so that a bare `NAME` can never pick up
# a host secret; the command's environment is passed as explicit NAME=VALUE lines of an env
# file on a descriptor (see `env_file`), never on the CLI's command line.
CLI_ENV_NAMES = (
    "PATH",
    "HOME",
    "LANG",
    "TMPDIR",
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "DOCKER_API_VERSION",
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "CONTAINER_SSHKEY",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
)

CLI_TIMEOUT_S = 60.0
# What a run's engine calls may take beyond its timeout, together: the removal of its
# container (and the reading of its state) after the command's own time, or a probe and a
# sweep before it. A hung engine (SIGSTOP, a deadlock) otherwise kept an answer waiting for
# 4 removal attempts of a 60 s CLI timeout each.
ENGINE_GRACE_S = 5.0
# The least time an engine call is given once a run's deadline has passed (the removal of
# a container whose command timed out still gets its chance).
_LAST_CALL_S = 1.0
CLI_OUTPUT_BYTES = 1024 * 1024
SIGNAL_BASE = 128  # the engine reports "killed by signal N" as exit status 128 + N
ENGINE_ERROR = 125  # the engine failed before or while starting the container


@attrs.frozen
class Deadline:
    """When a run must have its answer (`time.monotonic()`; None: no deadline): its timeout
    plus `ENGINE_GRACE_S`. Every engine call of the run is given what is left of it."""

    at: float | None = None

    @staticmethod
    def after(timeout_s: float | None) -> Deadline:
        if timeout_s is None:
            return Deadline()
        return Deadline(time.monotonic() + timeout_s + ENGINE_GRACE_S)

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def call_timeout(self, default: float = CLI_TIMEOUT_S) -> float:
        """An engine call's timeout: its default, but no later than the deadline (at least
        `_LAST_CALL_S`)."""
        left = self.remaining()
        return default if left is None else max(_LAST_CALL_S, min(default, left))

    def command_timeout(self, timeout_s: float | None) -> float | None:
        """The run's own CLI call: the command's timeout, counted from when the run began
        (what the probe took before it comes off), leaving `ENGINE_GRACE_S` for after."""
        left = self.remaining()
        if left is None or timeout_s is None:
            return timeout_s
        return max(_LAST_CALL_S, min(timeout_s, left - ENGINE_GRACE_S))

    def passed(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0


def cli_environment(host_env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    env = {name: host_env[name] for name in CLI_ENV_NAMES if name in host_env}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return tuple(sorted(env.items()))


def find_executable(command: str, host_env: Mapping[str, str]) -> str | None:
    """`command` as given (a path) or found on the host's PATH, if it can be run."""
    if os.sep in command:
        return command if os.access(command, os.X_OK) else None
    return shutil.which(command, path=host_env.get("PATH", os.defpath))


@attrs.frozen(kw_only=True)
class EngineCli:
    """One engine CLI as this process calls it: through `runner`, with `env` only."""

    runner: ProcessRunner
    executable: str
    env: tuple[tuple[str, str], ...]

    def spec(
        self,
        args: tuple[str, ...],
        *,
        stdin: bytes | StreamedInput | None = None,
        timeout_s: float | None = CLI_TIMEOUT_S,
        max_output_bytes: int = CLI_OUTPUT_BYTES,
        env_file: bytes | None = None,
        on_output: OutputSink | None = None,
    ) -> SpawnSpec:
        """`env_file`: the command's env file, readable by the CLI on `ENV_FILE_FD`;
        `on_output`: where the run's output goes as it comes (the container's)."""
        return SpawnSpec(
            argv=(self.executable, *args),
            env=self.env,
            cwd="/",
            stdin=stdin,
            on_output=on_output,
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            executable=self.executable,
            hooks=() if env_file is None else (env_file_hook(env_file),),
        )

    async def run(
        self, *args: str, timeout_s: float = CLI_TIMEOUT_S
    ) -> Result[ProcessOutcome, SpawnFailed]:
        """`ENGINE ARGS...` with the default output cap."""
        return await self.runner.run(self.spec(args, timeout_s=timeout_s))

    def run_blocking(self, portal: Portal, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        """`spec` (one of this CLI's) run to completion on `portal`: from synchronous code
        (a probe, a removal on close or at exit), even inside a running event loop."""
        return portal.call(functools.partial(self.runner.run, spec))

    async def state(self, name: str) -> dict[str, Any] | None:
        """The container's `.State` (OOMKilled, Error, ExitCode), or None if there is none."""
        found = await self.inspect_state(name)
        return found if isinstance(found, dict) else None

    async def inspect_state(
        self, name: str, *, timeout_s: float = CLI_TIMEOUT_S
    ) -> dict[str, Any] | Unreachable | None:
        """The container's `.State`; None if the engine has no such container (or its
        answer cannot be read); `Unreachable` if the engine could not be asked."""
        inspected = await self.run(
            "inspect", "--format", "{{json .State}}", name, timeout_s=timeout_s
        )
        lost = unreachable(inspected)
        if lost is not None:
            return lost
        if isinstance(inspected, Failure) or inspected.unwrap().exit_code != 0:
            return None
        try:
            state = json.loads(inspected.unwrap().stdout)
        except ValueError:
            return None
        return state if isinstance(state, dict) else None


@attrs.frozen
class Unreachable:
    """The engine did not answer a call: `reason` says how (timed out, cannot connect)."""

    reason: str


# What the engine CLIs print when the engine is not there, or went away mid-call.
_LOST_MARKS = (
    b"cannot connect to the docker daemon",
    b"is the docker daemon running",
    b"cannot connect to podman",
    b"connection refused",
    b"connection reset",
    b"unexpected eof",
    b"broken pipe",
    b"error during connect",
)


def unreachable(answer: Result[ProcessOutcome, SpawnFailed]) -> Unreachable | None:
    """Whether this engine CLI call's answer says the engine did not answer: the call
    timed out, or the CLI says it cannot reach the engine (or lost it during the call)."""
    if isinstance(answer, Failure):
        return None
    outcome = answer.unwrap()
    if outcome.timed_out:
        return Unreachable(f"no answer within {outcome.duration_s:.1f}s")
    if outcome.exit_code == 0:
        return None
    text = outcome.stderr.lower()
    if any(mark in text for mark in _LOST_MARKS):
        return Unreachable(tail(outcome.stderr, 300))
    return None


def remote_engine(host: HostContext) -> bool:
    """The engine may be on another host (`DOCKER_HOST`, `CONTAINER_HOST`, a context): its
    containers' pids and cgroups are not this host's to read."""
    env = dict(host.env)
    return any(env.get(name) for name in ("DOCKER_HOST", "CONTAINER_HOST", "DOCKER_CONTEXT"))


def owner_id() -> str:
    """This host process, as written into every container's owner label."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_gone(owner: str) -> bool:
    """The owner label names a process of this host that no longer exists."""
    hostname, _, pid_text = owner.rpartition(":")
    if hostname != socket.gethostname() or not pid_text.isdigit():
        return False
    return not pid_exists(int(pid_text))


def tail(data: bytes, limit: int = 500) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text[-limit:] if text else "(no output)"


def exit_status(code: int | None, signal: int | None) -> tuple[int | None, int | None]:
    """(exit code, signal) of the command, from what the engine CLI ended with: the engine
    reports a command killed by signal N as status 128 + N."""
    if code is not None and SIGNAL_BASE < code <= SIGNAL_BASE + 64:
        return None, code - SIGNAL_BASE
    return code, signal


def gone(removed: Result[ProcessOutcome, SpawnFailed]) -> bool:
    """Whether an `rm --force` left the engine without the container: it succeeded, or
    there was none. A container is forgotten only then: a removal that failed (the engine
    busy, the CLI cut short) would otherwise leave it running with nobody to remove it."""
    if isinstance(removed, Failure):
        return False
    outcome = removed.unwrap()
    return outcome.exit_code == 0 or b"no such container" in outcome.stderr.lower()
