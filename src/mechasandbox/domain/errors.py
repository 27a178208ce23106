"""Every way a run can fail, as typed values. `SandboxError` is their union.

A non-zero exit status is not here: it is a successful `RunResult`. Timeout, limit and
interruption errors carry the partial result captured before the run was stopped.
"""

from __future__ import annotations

import signal as signals
from typing import ClassVar

import attrs

from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.result import RunResult


@attrs.frozen(kw_only=True)
class ConfigInvalid:
    kind: ClassVar[str] = "config_invalid"
    problem: str
    source: str | None = None  # file (or "--option") the bad value came from
    field: str | None = None  # dotted path inside it

    @property
    def message(self) -> str:
        where = ": ".join(part for part in (self.source, self.field) if part)
        return f"{where}: {self.problem}" if where else self.problem


@attrs.frozen(kw_only=True)
class BackendUnavailable:
    kind: ClassVar[str] = "backend_unavailable"
    backend: str
    reason: str

    @property
    def message(self) -> str:
        return f"backend {self.backend!r} is unavailable: {self.reason}"


# How a user would stop asking for a protection, when that is a reasonable choice.
RELAX_HINTS = {
    Protection.HOST_PROCESSES_HIDDEN: '--host-processes visible, or host_processes = "visible"',
    Protection.NETWORK_NONE: "--network full",
    Protection.PROTECTED_PATHS: "filesystem.protected = []",
    Protection.NAMED_UNIX_SOCKETS: "name no unix socket (network.allow_unix_sockets)",
}


@attrs.frozen(kw_only=True)
class PolicyUnsupported:
    kind: ClassVar[str] = "policy_unsupported"
    backend: str
    missing: tuple[Protection, ...]

    @property
    def message(self) -> str:
        names = ", ".join(p.value for p in self.missing)
        hints = [RELAX_HINTS[p] for p in self.missing if p in RELAX_HINTS]
        relax = f"relax the policy ({'; '.join(hints)})" if hints else "relax the policy"
        return (
            f"backend {self.backend!r} cannot enforce: {names} "
            f"(choose a stronger backend, {relax}, or pass --best-effort)"
        )


@attrs.frozen(kw_only=True)
class SpawnFailed:
    """The command never started. `exit_status` is 127 (not found) or 126 (not executable)."""

    kind: ClassVar[str] = "spawn_failed"
    command: str
    reason: str
    exit_status: int = 126

    @property
    def message(self) -> str:
        return f"cannot run {self.command!r}: {self.reason}"


@attrs.frozen(kw_only=True)
class Timeout:
    kind: ClassVar[str] = "timeout"
    timeout_s: float
    partial: RunResult

    @property
    def message(self) -> str:
        return f"wall-clock timeout of {self.timeout_s:g}s reached; the process tree was killed"


@attrs.frozen(kw_only=True)
class LimitExceeded:
    """Common shape of the resource-limit errors: what was exceeded, and the partial result."""

    kind: ClassVar[str] = "limit"
    detail: str
    partial: RunResult

    @property
    def message(self) -> str:
        return self.detail


@attrs.frozen(kw_only=True)
class MemoryLimit(LimitExceeded):
    kind: ClassVar[str] = "memory_limit"


@attrs.frozen(kw_only=True)
class CpuLimit(LimitExceeded):
    kind: ClassVar[str] = "cpu_limit"


@attrs.frozen(kw_only=True)
class ProcessLimit(LimitExceeded):
    kind: ClassVar[str] = "process_limit"


@attrs.frozen(kw_only=True)
class FileSizeLimit(LimitExceeded):
    kind: ClassVar[str] = "file_size_limit"


@attrs.frozen(kw_only=True)
class Interrupted:
    """The caller was told to stop (SIGINT or SIGTERM to the CLI; see
    `runner.interruption`): the run's tree was killed. `partial` is what the run had
    written by then (nothing, when it had not started)."""

    kind: ClassVar[str] = "interrupted"
    signal: int
    partial: RunResult

    @property
    def message(self) -> str:
        try:
            name = signals.Signals(self.signal).name
        except ValueError:
            name = f"signal {self.signal}"
        return f"interrupted by {name}; the process tree was killed"


@attrs.frozen(kw_only=True)
class BackendFailed:
    kind: ClassVar[str] = "backend_failed"
    backend: str
    reason: str

    @property
    def message(self) -> str:
        return f"backend {self.backend!r} failed: {self.reason}"


SandboxError = (
    ConfigInvalid
    | BackendUnavailable
    | PolicyUnsupported
    | SpawnFailed
    | Timeout
    | MemoryLimit
    | CpuLimit
    | ProcessLimit
    | FileSizeLimit
    | Interrupted
    | BackendFailed
)


def partial_result(error: SandboxError) -> RunResult | None:
    """The output captured before a timeout, a limit or an interruption stopped the run,
    if any."""
    if isinstance(error, Timeout | LimitExceeded | Interrupted):
        return error.partial
    return None
