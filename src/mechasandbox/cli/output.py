"""Results and errors as the CLI contract writes them: the JSON object and exit statuses."""

from __future__ import annotations

import base64
import signal as signals
from typing import Any

from returns.result import Failure, Result

from mechasandbox.domain.errors import (
    Interrupted,
    SandboxError,
    SpawnFailed,
    Timeout,
    partial_result,
)
from mechasandbox.domain.result import RunResult

EXIT_TIMEOUT = 124
EXIT_SANDBOX_FAILED = 125


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _exact(data: bytes) -> str | None:
    """The bytes in base64 when the text form loses some (not valid UTF-8), else None."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")
    return None


def answering_backend(result: RunResult | None, error: SandboxError | None, configured: str) -> str:
    """The backend that ran the command or refused it, rather than the one configured
    (`auto`): the result's, the error's own, else the configured name (nothing answered)."""
    if result is not None:
        return result.backend
    named: object = getattr(error, "backend", None)
    return named if isinstance(named, str) else configured


def result_object(
    result: RunResult | None, error: SandboxError | None, backend: str
) -> dict[str, Any]:
    """Exactly the JSON object of docs/cli.md (partial output included on timeouts and
    limits). `backend`: the one that answered when the error does not say (see
    `answering_backend`)."""
    shown = result or (partial_result(error) if error is not None else None)
    return {
        "backend": answering_backend(shown, error, backend),
        "exit_code": shown.exit_code if shown else None,
        "signal": shown.signal if shown else None,
        "stdout": _text(shown.stdout) if shown else "",
        "stderr": _text(shown.stderr) if shown else "",
        "stdout_b64": _exact(shown.stdout) if shown else None,
        "stderr_b64": _exact(shown.stderr) if shown else None,
        "stdout_truncated": shown.stdout_truncated if shown else False,
        "stderr_truncated": shown.stderr_truncated if shown else False,
        "duration_s": round(shown.duration_s, 6) if shown else 0.0,
        "usage": {
            "cpu_s": round(shown.usage.cpu_s, 6) if shown else 0.0,
            "max_rss_bytes": shown.usage.max_rss_bytes if shown else 0,
        },
        "violations": [
            {"kind": v.kind, "detail": v.detail, "count": v.count} for v in shown.violations
        ]
        if shown
        else [],
        "warnings": list(shown.warnings) if shown else [],
        "notes": list(shown.notes) if shown else [],
        "node": shown.node if shown else None,
        "error": {"kind": error.kind, "message": error.message} if error is not None else None,
    }


def interrupted(
    result: Result[RunResult, SandboxError], signum: int, backend: str
) -> Result[RunResult, SandboxError]:
    """The answer of a run whose caller was told to stop by `signum` (see
    `runner.interruption`), whenever it came: `interrupted`, carrying what the run gave
    (its output so far, or all of it when the command ended first; nothing when it never
    started)."""
    error = result.failure() if isinstance(result, Failure) else None
    if isinstance(error, Interrupted):
        return result
    shown = result.value_or(None) or (partial_result(error) if error is not None else None)
    partial = shown or RunResult(backend=backend, exit_code=None, signal=None)
    return Failure(Interrupted(signal=signum, partial=partial))


def exit_status(result: RunResult | None, error: SandboxError | None) -> int:
    """The command's status, 128+N for signal N, 124 timeout, 125 sandbox failure, 126/127,
    128+N when the CLI was interrupted by signal N."""
    if isinstance(error, Interrupted):
        return 128 + error.signal
    if isinstance(error, Timeout):
        return EXIT_TIMEOUT
    if isinstance(error, SpawnFailed):
        return error.exit_status
    shown = result or (partial_result(error) if error is not None else None)
    if shown is None:
        return EXIT_SANDBOX_FAILED
    if shown.signal is not None:
        return 128 + shown.signal
    if shown.exit_code is not None:
        return shown.exit_code
    return EXIT_SANDBOX_FAILED


def signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return str(number)
