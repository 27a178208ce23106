"""One run handed to the spawn helper, as both helper runners do it: the `spawn` frame with
the run's stdio attached, the host's ends of that stdio, and the kill request. What the
runners then decide is `supervision`'s; they differ only in how they wait (`runner`: anyio;
`blocking`: the calling thread)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.domain.request import Terminal
from mechasandbox.runner import framing
from mechasandbox.runner.client import HelperUnavailable, SpawnHelperClient
from mechasandbox.runner.feed import StdinPipe
from mechasandbox.runner.spec import SpawnSpec

if TYPE_CHECKING:
    from mechasandbox.runner.interruption import Interruption

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
        "terminal": isinstance(spec.stdin, Terminal) and spec.terminal_session,
    }


@attrs.define
class Submitted:
    """A run the helper has: its socket (closing it kills the run's whole tree) and the
    host's ends of its stdio, non-blocking (`stdin`: see `feed`). `close` closes whatever
    is still open."""

    sock: socket.socket
    stdin: StdinPipe
    out_r: int
    err_r: int
    started: float  # time.monotonic() at submission

    def read(self, fd: int) -> bytes | None:
        """What output `fd` holds (b"": its end), None when nothing came after all."""
        try:
            return os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def close(self) -> None:
        self.stdin.close()
        for fd in (self.out_r, self.err_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.sock.close()


def submit(helper: SpawnHelperClient, spec: SpawnSpec) -> Result[Submitted, SpawnFailed]:
    """Send `spec` to the helper with fresh pipes for its stdio (stdin: /dev/null unless the
    spec has input or holds its stdin open). A `StreamedInput` stays on the host: the run
    gets a pipe of its own, which the runner fills (see `feed`). A `Terminal` is all three
    of the run's stdio; its output pipes then stay empty (the output is on the caller's
    master end)."""
    local: list[int] = []
    remote: list[int] = []
    try:
        if isinstance(spec.stdin, Terminal):
            return _submit_with_terminal(helper, spec, spec.stdin.fd)
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
        stdin = StdinPipe(stdin_w, hold=spec.hold_stdin)
        return Success(Submitted(sock, stdin, out_r, err_r, started))
    finally:
        for fd in remote + local:
            with contextlib.suppress(OSError):
                os.close(fd)


def _submit_with_terminal(
    helper: SpawnHelperClient, spec: SpawnSpec, terminal: int
) -> Result[Submitted, SpawnFailed]:
    remote = [os.dup(terminal) for _ in range(3)]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    for fd in (out_w, err_w):  # ended at once: the runner sees no output of its own
        os.close(fd)
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
    started = time.monotonic()
    try:
        sock = helper.submit(spawn_request(spec), remote)
    except (HelperUnavailable, framing.FrameError) as error:
        for fd in (out_r, err_r):
            os.close(fd)
        return Failure(SpawnFailed(command=spec.argv[0], reason=str(error)))
    finally:
        for fd in remote:
            with contextlib.suppress(OSError):
                os.close(fd)
    return Success(Submitted(sock, StdinPipe(None), out_r, err_r, started))


def submit_with_channel(
    helper: SpawnHelperClient, spec: SpawnSpec, channel: int, *, stdout: bool = False
) -> Result[Submitted, SpawnFailed]:
    """Start `spec` as a long-lived process whose stdin is `channel` (a session agent's end
    of its control socket, see `session_client`), whose stdout is /dev/null (`stdout`: the
    channel too, for an agent that speaks on its stdio: an engine CLI attached to a
    container) and whose stderr is a pipe the host reads when the process ends (a
    launcher's own message: bwrap's).
    `spec.stdin` is not used. Nobody supervises it: the caller reads the run's socket for
    its end, and closing that socket kills its whole tree."""
    remote = [
        os.dup(channel),
        os.dup(channel) if stdout else os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC),
    ]
    err_r, err_w = os.pipe()
    remote.append(err_w)
    os.set_blocking(err_r, False)
    started = time.monotonic()
    try:
        sock = helper.submit(spawn_request(spec), remote)
    except (HelperUnavailable, framing.FrameError) as error:
        os.close(err_r)
        return Failure(SpawnFailed(command=spec.argv[0], reason=str(error)))
    finally:
        for fd in remote:
            with contextlib.suppress(OSError):
                os.close(fd)
    return Success(
        Submitted(sock, StdinPipe(None), os.open(os.devnull, os.O_RDONLY), err_r, started)
    )


def request_kill(sock: socket.socket) -> None:
    """Ask the helper to kill the run's whole tree (it answers with its last word)."""
    with contextlib.suppress(OSError):
        framing.send(sock, {"op": "kill"})


class HelpedRunner:
    """What both runners (`HelperProcessRunner`, `BlockingHelperRunner`) share: the spawn
    helper they hand runs to, and what stops their runs when the caller is told to stop."""

    def __init__(
        self,
        helper: SpawnHelperClient | None = None,
        *,
        prestart: bool = True,
        interruption: Interruption | None = None,
    ) -> None:
        """`helper`: a client to share (its helper may already be starting); `prestart`:
        start the helper now, so that its start-up overlaps with the caller's own (imports,
        probes, policy compilation) instead of delaying the first run; `interruption`: what
        stops the runs when the caller is told to stop (see `runner.interruption`)."""
        self._helper = helper or SpawnHelperClient()
        self._interruption = interruption
        if prestart:
            self._helper.prestart()

    def start(
        self, spec: SpawnSpec, channel: int, *, stdout: bool = False
    ) -> Result[Submitted, SpawnFailed]:
        """Start a session's sandbox (see `submit_with_channel`), unsupervised."""
        return submit_with_channel(self._helper, spec, channel, stdout=stdout)

    def close(self) -> None:
        """Kill every run still going and stop the helper."""
        self._helper.close()
