"""Turning a process outcome into a `RunResult` or the limit error that explains it.

One rule for every limit (docs/failure-semantics.md): a limit that *refused* something in
a run that then completed is a violation of the completed result (kind `process_limit`,
`memory_limit`, with the count where the kernel keeps one); a limit is the run's error only
when it *ended* the run: the command's status says it was killed by the limit's signal
(SIGKILL of the OOM killer, SIGXCPU or the SIGKILL of the hard CPU limit, SIGXFSZ), or the
wall-clock deadline passed. A refused fork never kills anything, so `process_limit` is
always a violation.

"Killed by signal N" is read from the status, as the runner saw it or as a shell or
bubblewrap's init reports it (exit status 128+N): the host cannot tell a shell's report
of its last child's death from the command's own `exit 128+N`, and a shell reports the
death of its last command, which is what ended the run. A child killed by SIGXFSZ or
SIGXCPU whose shell then went on leaves no trace the host can read (no counter like the
cgroup's): such a run is reported as it completed, without a violation.
"""

from __future__ import annotations

import signal

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import (
    CpuLimit,
    FileSizeLimit,
    Interrupted,
    MemoryLimit,
    SandboxError,
    Timeout,
)
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.result import RunResult, Violation
from mechasandbox.domain.units import format_duration, format_size
from mechasandbox.limits.cgroup import CgroupEvents
from mechasandbox.runner.spec import ProcessOutcome

# Exit statuses above this are "killed by signal (status - 128)" by the shells' convention.
_SIGNALLED_BASE = 128


def run_result(
    backend: str,
    outcome: ProcessOutcome,
    *,
    warnings: tuple[str, ...] = (),
    violations: tuple[Violation, ...] = (),
) -> RunResult:
    return RunResult(
        backend=backend,
        exit_code=outcome.exit_code,
        signal=outcome.signal,
        stdout=outcome.stdout,
        stderr=outcome.stderr,
        stdout_truncated=outcome.stdout_truncated,
        stderr_truncated=outcome.stderr_truncated,
        duration_s=outcome.duration_s,
        usage=outcome.usage,
        violations=violations,
        warnings=warnings,
    )


def size_text(size: int) -> str:
    """A size as a person writes it (`100m`), with the exact byte count when that differs."""
    written = format_size(size)
    return written if written == str(size) else f"{written} ({size} bytes)"


def ending_signal(result: RunResult) -> int | None:
    """The signal that ended the run, as the runner saw it or as its status reports it."""
    if result.signal is not None:
        return result.signal
    code = result.exit_code
    if code is not None and _SIGNALLED_BASE < code < _SIGNALLED_BASE + signal.NSIG:
        return code - _SIGNALLED_BASE
    return None


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def limit_violations(
    result: RunResult, limits: Limits, events: CgroupEvents | None
) -> tuple[Violation, ...]:
    """What the cgroup's counters say a limit refused during the run. An OOM kill that
    ended the run is its error instead (see `classify`), not also a violation."""
    if events is None:
        return ()
    found: list[Violation] = []
    if events.pids_max_hits and limits.max_processes is not None:
        refused = _plural(events.pids_max_hits, "fork", "forks")
        found.append(
            Violation(
                kind="process_limit",
                detail=f"process limit of {limits.max_processes} reached: {refused} refused",
                count=events.pids_max_hits,
            )
        )
    if (
        events.oom_kills
        and limits.memory_bytes is not None
        and ending_signal(result) != signal.SIGKILL
    ):
        killed = _plural(events.oom_kills, "process", "processes")
        found.append(
            Violation(
                kind="memory_limit",
                detail=(
                    f"memory limit of {size_text(limits.memory_bytes)} reached: {killed} "
                    "killed by the OOM killer; the command went on"
                ),
                count=events.oom_kills,
            )
        )
    return tuple(found)


def classify(
    result: RunResult,
    *,
    limits: Limits,
    timed_out: bool,
    events: CgroupEvents | None = None,
    interrupted: int | None = None,
) -> Result[RunResult, SandboxError]:
    """A completed run (with what the limits refused as violations), or the typed error
    for what stopped it (with the output): the caller's interruption (`interrupted`: its
    signal), the deadline, or the limit that ended it."""
    violations = limit_violations(result, limits, events)
    if violations:
        result = attrs.evolve(result, violations=result.violations + violations)
    if interrupted is not None:
        return Failure(Interrupted(signal=interrupted, partial=result))
    if timed_out:
        return Failure(Timeout(timeout_s=limits.timeout_s or 0.0, partial=result))
    ended_by = ending_signal(result)
    if ended_by is None:
        return Success(result)
    oom_killed = events is not None and events.oom_kills > 0
    if oom_killed and limits.memory_bytes is not None and ended_by == signal.SIGKILL:
        detail = (
            f"memory limit of {size_text(limits.memory_bytes)} exceeded: "
            f"{_killed(result, ended_by, 'the OOM killer')}"
        )
        return Failure(MemoryLimit(detail=detail, partial=result))
    cpu_limit = limits.cpu_time_s
    if cpu_limit is not None and (
        ended_by == signal.SIGXCPU
        or (ended_by == signal.SIGKILL and result.usage.cpu_s >= cpu_limit)
    ):
        by = "SIGXCPU" if ended_by == signal.SIGXCPU else "SIGKILL (the hard CPU limit)"
        detail = (
            f"CPU-time limit of {_duration_text(cpu_limit)} exceeded: "
            f"{_killed(result, ended_by, by)}"
        )
        return Failure(CpuLimit(detail=detail, partial=result))
    if limits.max_file_size_bytes is not None and ended_by == signal.SIGXFSZ:
        detail = (
            f"file-size limit of {size_text(limits.max_file_size_bytes)} exceeded: "
            f"{_killed(result, ended_by, 'SIGXFSZ')}"
        )
        return Failure(FileSizeLimit(detail=detail, partial=result))
    return Success(result)


def _killed(result: RunResult, ended_by: int, by: str) -> str:
    if result.signal is not None:
        return f"a process was killed by {by}"
    return f"exit status {_SIGNALLED_BASE + ended_by} reports a process killed by {by}"


def _duration_text(seconds: float) -> str:
    written = format_duration(seconds)
    return written if written[-1].isalpha() else f"{written}s"
