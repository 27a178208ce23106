"""Turning a process outcome into a `RunResult` or the limit error that explains it."""

from __future__ import annotations

import signal

from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import (
    CpuLimit,
    FileSizeLimit,
    Interrupted,
    MemoryLimit,
    ProcessLimit,
    SandboxError,
    Timeout,
)
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.result import RunResult, Violation
from mechasandbox.limits.cgroup import CgroupEvents
from mechasandbox.runner.spec import ProcessOutcome


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


def classify(
    result: RunResult,
    *,
    limits: Limits,
    timed_out: bool,
    events: CgroupEvents | None = None,
    interrupted: int | None = None,
) -> Result[RunResult, SandboxError]:
    """A completed run, or the typed error for what stopped it (with the output): the
    caller's interruption (`interrupted`: its signal), the deadline, or a limit."""
    if interrupted is not None:
        return Failure(Interrupted(signal=interrupted, partial=result))
    if timed_out:
        return Failure(Timeout(timeout_s=limits.timeout_s or 0.0, partial=result))
    if events is not None and events.oom_kills and limits.memory_bytes is not None:
        detail = f"memory limit of {limits.memory_bytes} bytes exceeded; the run was OOM-killed"
        return Failure(MemoryLimit(detail=detail, partial=result))
    if events is not None and events.pids_max_hits and limits.max_processes is not None:
        detail = (
            f"process limit of {limits.max_processes} reached "
            f"({events.pids_max_hits} fork attempts refused)"
        )
        return Failure(ProcessLimit(detail=detail, partial=result))
    cpu_limit = limits.cpu_time_s
    if cpu_limit is not None and (
        result.signal == signal.SIGXCPU
        or (result.signal == signal.SIGKILL and result.usage.cpu_s >= cpu_limit)
    ):
        detail = f"CPU-time limit of {cpu_limit:g}s exceeded"
        return Failure(CpuLimit(detail=detail, partial=result))
    if limits.max_file_size_bytes is not None and result.signal == signal.SIGXFSZ:
        detail = f"file-size limit of {limits.max_file_size_bytes} bytes exceeded"
        return Failure(FileSizeLimit(detail=detail, partial=result))
    return Success(result)
