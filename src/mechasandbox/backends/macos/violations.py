"""Seatbelt denials, read from the unified log and turned into `Violation`s (best-effort).

The kernel logs each denial of a sandboxed process as one message from the Sandbox kext:

    Sandbox: cat(7866) deny(1) file-read-data /Users/me/.ssh/id_rsa

and, when the denying rule carries `(with message "TAG")`, the message ends with that tag
(on a line of its own). The compiler puts a fresh tag on every deny of a run's profile, so
`log stream --predicate 'eventMessage ENDSWITH "TAG"'`, started before the run and stopped
after it, sees that run's denials and no other run's, whatever the pids.

Best-effort, by design: `log stream` may be refused (non-admin users), the kernel
rate-limits repeated denials ("N duplicate reports for ..."), and a message can reach the
stream after we stop reading. The system's own chatter (`NOISE`) is left out. The cost is
bounded: at most `ready_s` waiting for the stream to start, and `drain_s` after the run
for late messages.

`parse_denials` is pure and golden-tested on any OS; `watch_denials` runs `log`.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterable

import anyio
import attrs

from mechasandbox.domain.result import Violation

LOG_COMMAND = "/usr/bin/log"
MAX_VIOLATIONS = 100
# `log stream` prints its "Filtering the log data" banner once it streams: waited for up to
# READY_S (it usually comes well before; codex waits as long), then DRAIN_S after the run.
READY_S = 2.0
DRAIN_S = 0.3
# What `log stream` said on stderr, kept for the note when it could not stream.
MAX_STDERR = 2000
# Denials that are the system's chatter, not the command's doing: the logging and analytics
# lookups every framework makes. (sandbox-runtime also drops mDNSResponder's: kept here, as
# under network `none` a denied name lookup is what explains a failed `curl`.)
NOISE: tuple[tuple[str, str], ...] = (
    ("mach-lookup", "com.apple.diagnosticd"),
    ("mach-lookup", "com.apple.analyticsd"),
)

_DENIAL = re.compile(
    r"^Sandbox: (?P<process>.+?)\((?P<pid>\d+)\) deny\((?P<count>\d+)\) "
    r"(?P<operation>[a-z0-9*-]+)(?: (?P<target>.*))?$"
)
_DUPLICATES = re.compile(
    r"^Sandbox: (?P<repeats>\d+) duplicate reports? for (?P<process>.+?) deny\((?P<count>\d+)\) "
    r"(?P<operation>[a-z0-9*-]+)(?: (?P<target>.*))?$"
)
_KINDS: tuple[tuple[str, str], ...] = (
    ("file-", "filesystem"),
    ("network", "network"),
    ("system-socket", "network"),
    ("mach-", "ipc"),
    ("ipc-", "ipc"),
    ("process-", "process"),
    ("signal", "process"),
    ("sysctl", "sysctl"),
    ("iokit-", "iokit"),
)


def predicate(tag: str) -> str:
    """The `log` predicate for one run's denials (`tag` is from a strict alphabet)."""
    return f'eventMessage ENDSWITH "{tag}"'


def kind_of(operation: str) -> str:
    """The violation kind for an SBPL operation: filesystem, network, ipc, process, ..."""
    return next((kind for prefix, kind in _KINDS if operation.startswith(prefix)), "other")


def _message(line: str) -> str | None:
    """The `eventMessage` of one ndjson line (None for the banner and anything else)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    message = event.get("eventMessage") if isinstance(event, dict) else None
    return message if isinstance(message, str) else None


def _denial(message: str, tag: str) -> Violation | None:
    text = message.rstrip()
    if not text.endswith(tag):
        return None
    first = text[: -len(tag)].strip().splitlines()
    if not first:
        return None
    line = first[0].strip()
    match = _DENIAL.match(line) or _DUPLICATES.match(line)
    if match is None:
        return None
    fields = match.groupdict()
    operation = fields["operation"]
    target = (fields.get("target") or "").strip()
    if _noise(operation, target):
        return None
    who = fields["process"] + (f" (pid {fields['pid']})" if fields.get("pid") else "")
    detail = f"{who} was denied {operation}" + (f": {target}" if target else "")
    if fields.get("repeats"):
        detail += f" ({fields['repeats']} more times)"
    return Violation(kind=kind_of(operation), detail=detail)


def _noise(operation: str, target: str) -> bool:
    return any(operation.startswith(op) and word in target for op, word in NOISE)


def parse_denials(lines: Iterable[str], tag: str) -> tuple[Violation, ...]:
    """The run's denials in `log stream --style ndjson` output, deduplicated, in order.

    Only messages ending with the run's `tag` count; at most MAX_VIOLATIONS are kept.
    """
    found: dict[Violation, None] = {}
    for line in lines:
        message = _message(line)
        violation = _denial(message, tag) if message is not None else None
        if violation is not None and len(found) < MAX_VIOLATIONS:
            found[violation] = None
    return tuple(found)


@attrs.define
class DenialLog:
    """What one `log stream` saw; `violations()` parses it. `problem` says why it saw
    nothing, when it could not run."""

    tag: str
    lines: list[str] = attrs.field(factory=list)
    problem: str | None = None
    pending: bytes = b""

    def violations(self) -> tuple[Violation, ...]:
        return parse_denials(self.lines, self.tag)


async def _collect(
    stream: anyio.abc.ByteReceiveStream, log: DenialLog, seconds: float, *, first_only: bool
) -> None:
    """Read whole lines into `log` for up to `seconds` (or the first chunk, or EOF)."""
    with anyio.move_on_after(seconds):
        async for chunk in stream:
            log.pending += chunk
            *complete, log.pending = log.pending.split(b"\n")
            log.lines.extend(line.decode(errors="replace") for line in complete)
            if first_only:
                return


@contextlib.asynccontextmanager
async def watch_denials(
    tag: str,
    *,
    command: str = LOG_COMMAND,
    ready_s: float = READY_S,
    drain_s: float = DRAIN_S,
) -> AsyncIterator[DenialLog]:
    """Stream the unified log for `tag`'s denials while the body runs.

    Waits at most `ready_s` for the stream to start (its banner line) and `drain_s` after
    the body for late messages; a stream that cannot start leaves `problem` set instead.
    Lines are read after the body (the pipe holds a few dozen denials meanwhile; more
    only delay `log`, which then writes them while we drain).
    """
    log = DenialLog(tag)
    argv = [command, "stream", "--style", "ndjson", "--predicate", predicate(tag)]
    try:
        process = await anyio.open_process(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as error:
        log.problem = f"`log stream` did not start: {error}"
        yield log
        return
    assert process.stdout is not None
    assert process.stderr is not None
    said = DenialLog(tag)  # what it wrote on stderr
    try:
        await _collect(process.stdout, log, ready_s, first_only=True)
        yield log
    finally:
        with anyio.CancelScope(shield=True):
            await _collect(process.stdout, log, drain_s, first_only=False)
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await _collect(process.stderr, said, 0.1, first_only=False)
            await process.aclose()
    if process.returncode not in (0, -9) and not log.lines:
        stderr = "\n".join([*said.lines, said.pending.decode(errors="replace")]).strip()
        log.problem = f"`log stream` exited with status {process.returncode}" + (
            f": {stderr[:MAX_STDERR]}" if stderr else ""
        )
