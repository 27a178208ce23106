"""What a completed run produced."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class Usage:
    cpu_s: float = 0.0
    max_rss_bytes: int = 0


@attrs.frozen(kw_only=True)
class Violation:
    """Something the sandbox stopped, written for the agent to read (kind: network,
    process_limit, memory_limit, ...). `count`: how many times, where it is counted (the
    forks a process limit refused); None where each is its own violation."""

    kind: str
    detail: str
    count: int | None = None


@attrs.frozen(kw_only=True)
class RunResult:
    """A run that completed, whatever its exit status: a non-zero exit is data, not an error."""

    backend: str
    exit_code: int | None
    signal: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_s: float = 0.0
    usage: Usage = Usage()
    violations: tuple[Violation, ...] = ()
    # Protections not enforced in this run (best-effort gaps, weaker limits, lost guards).
    warnings: tuple[str, ...] = ()
    # Information about the run that is no gap: the engine's version, the image, a pool.
    notes: tuple[str, ...] = ()
    # The cluster node that ran it (a Ray node id, `backend = "ray"`); None: this host.
    node: str | None = None
