"""One run handed to the spawn helper, as both helper runners do it: the `spawn` frame with
the run's stdio attached, and the helper's last word turned into an outcome. The runners
differ only in how they wait (`runner`: anyio; `blocking`: the calling thread)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from typing import Any

from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.domain.result import Usage
from mechasandbox.runner import framing
from mechasandbox.runner.capture import CappedBuffer
from mechasandbox.runner.client import HelperUnavailable, SpawnHelperClient
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec

# After the process exits, its leftovers are killed by the helper, so the pipes reach EOF
# at once; this bound only matters if something unexpected still holds a pipe open.
DRAIN_GRACE_S = 2.0
READ_CHUNK = 256 * 1024


def spawn_request(spec: SpawnSpec) -> dict[str, Any]:
    """The helper's `spawn` frame for `spec`."""
    return {
        "argv": list(spec.argv),
        "env": [list(pair) for pair in spec.env],
        "cwd": spec.cwd,
        "umask": spec.umask,
        "rlimits": [[r.resource, r.soft, r.hard] for r in spec.rlimits],
        "cgroup_procs": list(spec.cgroup_procs),
        "ahead": [[h.target, h.argument] for h in spec.hooks if h.ahead],
        "hooks": [[h.target, h.argument] for h in spec.hooks if not h.ahead],
        "rehearsals": [[h.rehearsal, h.argument] for h in spec.hooks if h.rehearsal],
        "executable": spec.executable,
        "prepare": [list(group) for group in spec.prepare_after],
        "on_host_loss": list(spec.on_host_loss),
    }


def spawn_failure(spec: SpawnSpec, code: int, stage: str) -> SpawnFailed:
    command = spec.argv[0]
    if stage == "exec" and code == errno.ENOENT:
        return SpawnFailed(command=command, reason="command not found", exit_status=127)
    reason = f"{os.strerror(code)} (while setting up: {stage})"
    if stage == "exec":
        reason = f"not executable: {os.strerror(code)}"
    return SpawnFailed(command=command, reason=reason, exit_status=126)


def is_last_word(message: dict[str, Any]) -> bool:
    """The helper's last word on a run: `exited` or `failed` (`started` comes before
    `exited` and is skipped)."""
    return message.get("event") in ("exited", "failed")


class Submitted:
    """A run the helper has: its socket (closing it kills the run's whole tree) and the
    host's ends of its stdio, non-blocking. `close` closes whatever is still open."""

    def __init__(
        self, sock: socket.socket, stdin_w: int | None, out_r: int, err_r: int, started: float
    ) -> None:
        self.sock = sock
        self.stdin_w = stdin_w
        self.out_r = out_r
        self.err_r = err_r
        self.started = started

    def close_stdin(self) -> None:
        if self.stdin_w is not None:
            with contextlib.suppress(OSError):
                os.close(self.stdin_w)
            self.stdin_w = None

    def close(self) -> None:
        self.close_stdin()
        for fd in (self.out_r, self.err_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.sock.close()


def submit(helper: SpawnHelperClient, spec: SpawnSpec) -> Result[Submitted, SpawnFailed]:
    """Send `spec` to the helper with fresh pipes for its stdio (stdin: /dev/null unless the
    spec has input or holds its stdin open)."""
    local: list[int] = []
    remote: list[int] = []
    try:
        if spec.stdin is None and not spec.hold_stdin:
            remote.append(os.open(os.devnull, os.O_RDONLY))
            stdin_w = None
        else:
            stdin_r, stdin_w = os.pipe()
            remote.append(stdin_r)
            local.append(stdin_w)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        remote += [out_w, err_w]
        local += [out_r, err_r]
        for fd in local:
            os.set_blocking(fd, False)
        started = time.monotonic()
        try:
            sock = helper.submit(spawn_request(spec), remote)
        except (HelperUnavailable, framing.FrameError) as error:
            return Failure(SpawnFailed(command=spec.argv[0], reason=str(error)))
        local.clear()
        return Success(Submitted(sock, stdin_w, out_r, err_r, started))
    finally:
        for fd in remote + local:
            with contextlib.suppress(OSError):
                os.close(fd)


def request_kill(sock: socket.socket) -> None:
    """Ask the helper to kill the run's whole tree (it answers with its last word)."""
    with contextlib.suppress(OSError):
        framing.send(sock, {"op": "kill"})


def outcome_of(
    spec: SpawnSpec,
    last: dict[str, Any],
    out: CappedBuffer,
    err: CappedBuffer,
    *,
    started: float,
    timed_out: bool,
    stopped: str | None = None,
) -> Result[ProcessOutcome, SpawnFailed]:
    """The run's outcome from the helper's last word and the captured output."""
    if last.get("event") == "failed":
        return Failure(spawn_failure(spec, int(last["errno"]), str(last["stage"])))
    status = int(last["status"])
    return Success(
        ProcessOutcome(
            exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            stdout=out.value(),
            stderr=err.value(),
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            duration_s=time.monotonic() - started,
            usage=Usage(cpu_s=float(last["cpu_s"]), max_rss_bytes=int(last["max_rss_bytes"])),
            timed_out=timed_out,
            stopped=stopped,
        )
    )
