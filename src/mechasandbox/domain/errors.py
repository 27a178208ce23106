"""Every way a run can fail, as typed values. `SandboxError` is their union.

A non-zero exit status is not here: it is a successful `RunResult`. Timeout, limit,
interruption and engine-loss errors carry the partial result captured before the run was
stopped.
"""

from __future__ import annotations

import signal as signals
from collections.abc import Sequence
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
    # The other problems found at the same time (a file that widens two things is told
    # both at once), each with its own source and field; `message` lists them all.
    more: tuple[ConfigInvalid, ...] = ()

    @staticmethod
    def together(problems: Sequence[ConfigInvalid]) -> ConfigInvalid:
        """One error for several (at least one): the first, with the rest in `more`."""
        flat = [one for problem in problems for one in (problem, *problem.more)]
        return attrs.evolve(flat[0], more=tuple(attrs.evolve(p, more=()) for p in flat[1:]))

    @property
    def message(self) -> str:
        shown = [self._located(None)]
        shown += [problem._located(self.source) for problem in self.more]
        return "; ".join(shown)

    def _located(self, known_source: str | None) -> str:
        """`source: field: problem`, the source left out where the reader has just read it."""
        source = None if self.source == known_source else self.source
        where = ": ".join(part for part in (source, self.field) if part)
        return f"{where}: {self.problem}" if where else self.problem


@attrs.frozen(kw_only=True)
class _Told:
    """An error whose message is its `told` template filled in with its fields."""

    kind: ClassVar[str]
    told: ClassVar[str]  # a `str.format` template over the fields

    @property
    def message(self) -> str:
        return self.told.format(**attrs.asdict(self, recurse=False))


@attrs.frozen(kw_only=True)
class _BackendProblem(_Told):
    backend: str
    reason: str


@attrs.frozen(kw_only=True)
class BackendUnavailable(_BackendProblem):
    kind: ClassVar[str] = "backend_unavailable"
    told: ClassVar[str] = "backend {backend!r} is unavailable: {reason}"


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
class SpawnFailed(_Told):
    """The command never started. `exit_status` is 127 (not found) or 126 (not executable)."""

    kind: ClassVar[str] = "spawn_failed"
    told: ClassVar[str] = "cannot run {command!r}: {reason}"
    command: str
    reason: str
    exit_status: int = 126


@attrs.frozen(kw_only=True)
class _Stopped(_Told):
    """A run stopped before its end: what it had written by then is kept."""

    partial: RunResult


@attrs.frozen(kw_only=True)
class Timeout(_Stopped):
    kind: ClassVar[str] = "timeout"
    told: ClassVar[str] = (
        "wall-clock timeout of {timeout_s:g}s reached; the process tree was killed"
    )
    timeout_s: float


@attrs.frozen(kw_only=True)
class LimitExceeded(_Stopped):
    """The resource-limit errors: what was exceeded (`detail`), and the partial result."""

    kind: ClassVar[str] = "limit"
    told: ClassVar[str] = "{detail}"
    detail: str


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
class Interrupted(_Stopped):
    """The caller was told to stop (SIGINT or SIGTERM to the CLI; see
    `runner.interruption`): the run's tree was killed. `partial` is what the run had
    written by then (nothing, when it had not started)."""

    kind: ClassVar[str] = "interrupted"
    told: ClassVar[str] = "interrupted by {name}; the process tree was killed"
    signal: int

    @property
    def message(self) -> str:
        try:
            name = signals.Signals(self.signal).name
        except ValueError:
            name = f"signal {self.signal}"
        return self.told.format(name=name)


@attrs.frozen(kw_only=True)
class EngineLost(_Stopped):
    """The container engine (dockerd, podman's service) went away or stopped answering
    during the run: killed, stopped, hung. `reason` says what was seen and what became of
    the command (its processes killed from this host, or why they could not be); `partial`
    is the output read until then. A run never ends this way while its command still runs
    where this host can stop it (docs/failure-semantics.md)."""

    kind: ClassVar[str] = "engine_lost"
    told: ClassVar[str] = "backend {backend!r} lost its container engine during the run: {reason}"
    backend: str
    reason: str


@attrs.frozen(kw_only=True)
class NodeLost(_Stopped):
    """The cluster node running the command (`backend = "ray"`) died or became unreachable
    during the run: `partial` holds the output that had arrived, the workspace is as it
    was before the run (changes come back only with a finished run). The command is not
    run again unless the caller opted in (`ray.retries`): it may have had side effects."""

    kind: ClassVar[str] = "node_lost"
    told: ClassVar[str] = "the cluster node {node} was lost during the run: {reason}"
    node: str
    reason: str


@attrs.frozen(kw_only=True)
class BackendFailed(_BackendProblem):
    kind: ClassVar[str] = "backend_failed"
    told: ClassVar[str] = "backend {backend!r} failed: {reason}"


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
    | EngineLost
    | NodeLost
    | BackendFailed
)


def partial_result(error: SandboxError) -> RunResult | None:
    """The output captured before a timeout, a limit or an interruption stopped the run,
    if any."""
    if isinstance(error, _Stopped):
        return error.partial
    return None
