"""The host's side of a session agent's channel (see `session_protocol`): one command at a
time, supervised as a one-shot run is.

`AgentChannel.run(spec)` hands the agent the records of `spec` (`native.encode_records` of
the runner's own spawn request: the one-shot exec shim's records) and supervises the command
with the runner's `Supervision` (deadline, output cap, `on_output`, the drain, the outcome):
its stdio are pipes of the host's passed with the RUN frame, read and fed as the runner
does (`StdioMode.FDS`), or its output and input travel as frames on the channel
(`StdioMode.FRAMED`). A deadline, a sink that raised, or the caller's cancellation sends
KILL (the agent kills the command's whole tree) and waits for the last word, shielded.
The caller serialises its commands (`AgentSession` holds a lock).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import selectors
import socket

import anyio
from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import BackendFailed, SandboxError, SpawnFailed
from mechasandbox.domain.request import StreamedInput, Terminal
from mechasandbox.runner import native
from mechasandbox.runner import session_protocol as protocol
from mechasandbox.runner.feed import CHUNK, InputFeed, StdinPipe, pollable
from mechasandbox.runner.runner import feed_within
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec
from mechasandbox.runner.submission import READ_CHUNK, spawn_request
from mechasandbox.runner.supervision import DRAIN_GRACE_S, STDERR, STDOUT, Supervision

# How long the agent may take to say HELLO (bwrap sets up in ~10 ms; a container's start
# is the engine's business, so callers pass their own bound).
HELLO_TIMEOUT_S = 10.0
# After KILL, the agent's tree kill is bounded by 2 s; past this, the agent is lost.
KILL_ANSWER_S = 5.0


class AgentChannel:
    """The host's end of one agent's channel: a connected unix stream socket (`over_socket`)
    or a pair of pipes (`over_pipes`: FRAMED only). `backend` names the sandbox in errors;
    `mode`: how each command's stdio travels. `ended` says why the agent is gone, once it is
    (its BYE, or the channel closing)."""

    def __init__(
        self,
        read_fd: int,
        write_fd: int,
        *,
        backend: str,
        mode: protocol.StdioMode,
        sock: socket.socket | None = None,
    ) -> None:
        if mode is protocol.StdioMode.FDS and sock is None:
            raise ValueError("descriptors travel only over a unix socket")
        self.backend = backend
        self.mode = mode
        self.ended: str | None = None
        self.hello: protocol.Hello | None = None
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._sock = sock
        self._reader = protocol.FrameReader()
        self._messages: list[protocol.AgentMessage] = []
        self._taken: anyio.Event | None = None
        self._tree_left: protocol.TreeLeft | None = None
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)

    @classmethod
    def over_socket(
        cls, sock: socket.socket, *, backend: str, mode: protocol.StdioMode
    ) -> AgentChannel:
        return cls(sock.fileno(), sock.fileno(), backend=backend, mode=mode, sock=sock)

    @classmethod
    def over_pipes(cls, read_fd: int, write_fd: int, *, backend: str) -> AgentChannel:
        return cls(read_fd, write_fd, backend=backend, mode=protocol.StdioMode.FRAMED)

    def close(self) -> None:
        """Close the channel: the agent kills the command under way, if any, and ends."""
        if self.ended is None:
            self.ended = "the session was closed"
        if self._sock is not None:
            self._sock.close()
        else:
            for fd in {self._read_fd, self._write_fd}:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read_fd = self._write_fd = -1

    def tree_left(self) -> protocol.TreeLeft | None:
        """What the agent said it could not kill of the last command (None: nothing)."""
        return self._tree_left

    # --- the wire --------------------------------------------------------------------------
    async def _send(self, data: bytes, fds: list[int] | None = None) -> None:
        view = memoryview(data)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _ints(fds))] if fds else []
        while view:
            try:
                if self._sock is not None:
                    sent = self._sock.sendmsg([view], rights)
                    rights = []
                else:
                    sent = os.write(self._write_fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self._write_fd)
                continue
            except OSError as error:
                self._lost(f"the agent's channel failed: {error.strerror}")
                return
            view = view[sent:]

    def _lost(self, why: str) -> None:
        if self.ended is None:
            self.ended = why

    def ended_between_commands(self) -> str | None:
        """`ended`, after reading without waiting what the agent said while no command ran
        (its BYE, its channel closed). Only between commands: during one, its reader
        takes the agent's words."""
        self._between_commands()
        return self.ended

    def _between_commands(self) -> None:
        """What the agent said while no command ran (its BYE), read without waiting."""
        while self.ended is None:
            try:
                data = os.read(self._read_fd, READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._lost("the agent's channel closed (the agent or its sandbox ended)")
                break
            try:
                said = self._reader.feed(data)
            except protocol.ProtocolError as error:
                self._lost(f"the agent spoke out of protocol: {error}")
                break
            for message in said:
                if isinstance(message, protocol.Bye):
                    self._said_bye(message)
        self._messages.clear()

    def _said_bye(self, message: protocol.Bye) -> None:
        self._lost(f"the session ended: {protocol.BYE_TEXT.get(message.reason, 'bye')}")

    async def _next(self) -> protocol.AgentMessage | None:
        """The agent's next message; None once it is gone (`ended` says why)."""
        while not self._messages:
            if self.ended is not None:
                return None
            await anyio.wait_readable(self._read_fd)
            self._messages += self._read_messages()
        return self._messages.pop(0)

    def _read_messages(self) -> list[protocol.AgentMessage]:
        """What the channel holds (it polled readable), as messages, and any queued before;
        at its end or on nonsense `ended` says why."""
        said, self._messages = self._messages, []
        try:
            data = os.read(self._read_fd, READ_CHUNK)
        except BlockingIOError:
            return said
        except OSError as error:
            data = b""
            self._lost(f"the agent's channel failed: {error.strerror}")
        if not data:
            self._lost("the agent's channel closed (the agent or its sandbox ended)")
            return said
        try:
            return said + self._reader.feed(data)
        except protocol.ProtocolError as error:
            self._lost(f"the agent spoke out of protocol: {error}")
            return said

    async def wait_hello(self) -> Result[protocol.Hello, str]:
        """The agent's HELLO (call once, first), or why it did not come."""
        message = await self._next()
        if isinstance(message, protocol.Hello) and message.protocol == protocol.SESSION_PROTOCOL:
            self.hello = message
            return Success(message)
        if message is not None:
            self._lost(f"the agent did not say hello first ({message!r})")
        return Failure(self.ended or "the agent did not start")

    # --- one command ------------------------------------------------------------------------
    async def run(self, spec: SpawnSpec) -> Result[ProcessOutcome, SandboxError]:
        """Run `spec` through the agent (its argv, environment, directory, umask, rlimits and
        native hooks: see `native`) and supervise it until its last word."""
        self._between_commands()
        if self.ended is not None:
            return Failure(
                BackendFailed(backend=self.backend, reason=f"session over: {self.ended}")
            )
        if isinstance(spec.stdin, Terminal):
            reason = "a session gives its commands no terminal"
            return Failure(SpawnFailed(command=spec.argv[0], reason=reason))
        records = native.encode_records(spawn_request(spec))
        if records is None:
            reason = "its set-up cannot be told to the session agent as records"
            return Failure(SpawnFailed(command=spec.argv[0], reason=reason))
        supervision = Supervision(spec, now=anyio.current_time())
        started = anyio.current_time()
        self._tree_left = None
        if self.mode is protocol.StdioMode.FDS:
            stdin, out_r, err_r, remote = _host_stdio(spec)
            try:
                await self._send(protocol.run_frame(records, self.mode), remote)
            finally:
                for fd in remote:
                    os.close(fd)
            ends = (stdin, out_r, err_r)
        else:
            await self._send(protocol.run_frame(records, self.mode))
            ends = None
        try:
            await self._supervise(spec, supervision, ends)
        finally:
            if ends is not None:
                ends[0].close()
                for fd in ends[1:]:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        left = self.tree_left()
        if left is not None:
            return Failure(BackendFailed(backend=self.backend, reason=_tree_left(left)))
        if supervision.last is None:
            why = self.ended or "the agent's channel closed"
            reason = f"the session ended during the command: {why}"
            return Failure(BackendFailed(backend=self.backend, reason=reason))
        outcome: Result[ProcessOutcome, SandboxError] = supervision.outcome(
            duration_s=anyio.current_time() - started
        )
        return outcome

    async def _supervise(
        self, spec: SpawnSpec, supervision: Supervision, ends: tuple[StdinPipe, int, int] | None
    ) -> None:
        feeding = anyio.CancelScope()
        try:
            if ends is None:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._feed_frames, spec.stdin, feeding)
                    await self._watch(supervision, {})
                    feeding.cancel()
                return
            pipes = {ends[1]: STDOUT, ends[2]: STDERR}
            feed = InputFeed(ends[0], spec.stdin)
            if feed.done:  # no input to feed (most commands): no task at all
                await self._watch(supervision, pipes)
                return
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(feed_within, feed, feeding)
                await self._watch(supervision, pipes)
                feeding.cancel()
        except BaseException:
            # Cancelled (or broken): the command's tree dies before control goes back.
            if supervision.last is None and self.ended is None:
                with anyio.CancelScope(shield=True):
                    await self._send(protocol.kill_frame())
                    with anyio.move_on_after(KILL_ANSWER_S):
                        while supervision.last is None and self.ended is None:
                            await self._take(supervision)
            raise

    async def _watch(self, supervision: Supervision, pipes: dict[int, int]) -> None:
        """The channel and the command's output pipes (`pipes`: fd -> stream), until the
        agent's last word and the output's end (or its grace period). One selector holds
        them all and the event loop waits on the selector's own descriptor: one wait per
        event, whichever is ready, rather than a task per pipe and a wake-up for each. An
        agent that does not answer its KILL is lost (a command stopped it, where a runtime
        lets a container's process signal its PID 1): the session ends rather than hang."""
        channel = self._read_fd
        with selectors.DefaultSelector() as selector:
            selector.register(channel, selectors.EVENT_READ)
            for fd in pipes:
                selector.register(fd, selectors.EVENT_READ)
            watching = True  # the channel: until the last word
            drain_until = math.inf
            answer_by = math.inf
            while True:
                now = anyio.current_time()
                if watching and supervision.last is None and now >= answer_by:
                    self._lost(f"the agent did not answer a kill within {KILL_ANSWER_S:g} s")
                if watching and (supervision.last is not None or self.ended is not None):
                    selector.unregister(channel)
                    watching = False
                    if supervision.last is None:  # the agent is gone: the output's grace
                        drain_until = now + DRAIN_GRACE_S
                if not watching and (not pipes or supervision.done(now) or now >= drain_until):
                    return
                ready = selector.select(0)
                if not ready:
                    waiting_for_kill = supervision.killing and supervision.last is None
                    deadline = min(supervision.wake_at(), drain_until, answer_by)
                    with anyio.CancelScope(deadline=deadline, shield=waiting_for_kill):
                        await anyio.wait_readable(selector.fileno())
                    ready = selector.select(0)
                self._read_ready(ready, selector, supervision, pipes)
                now = anyio.current_time()
                if supervision.tick(now):  # the deadline, a watch, a sink
                    await self._send(protocol.kill_frame())
                    answer_by = min(answer_by, now + KILL_ANSWER_S)

    def _read_ready(
        self,
        ready: list[tuple[selectors.SelectorKey, int]],
        selector: selectors.BaseSelector,
        supervision: Supervision,
        pipes: dict[int, int],
    ) -> None:
        """What the ready descriptors hold: the agent's words, the command's output (a pipe
        at its end leaves the selector)."""
        for key, _ in ready:
            if key.fd == self._read_fd:
                for message in self._read_messages():
                    self._handle(supervision, message, anyio.current_time())
                continue
            try:
                data = os.read(key.fd, READ_CHUNK)
            except BlockingIOError:
                continue
            supervision.output(pipes[key.fd], data)
            if not data:
                selector.unregister(key.fd)
                del pipes[key.fd]

    async def _take(self, supervision: Supervision) -> None:
        """One message of the agent's, handed to the supervision."""
        message = await self._next()
        if message is not None:
            self._handle(supervision, message, anyio.current_time())

    def _handle(self, supervision: Supervision, message: protocol.AgentMessage, now: float) -> None:
        if isinstance(message, protocol.Output):
            supervision.output(message.stream, message.data)
        elif isinstance(message, protocol.Exited):
            exited = {
                "event": "exited",
                "status": message.status,
                "cpu_s": message.cpu_s,
                "max_rss_bytes": message.max_rss_bytes,
            }
            supervision.message(exited, now=now)
        elif isinstance(message, protocol.Error):
            failed = {
                "event": "failed",
                "errno": message.errno or errno.EIO,
                "stage": message.stage,
            }
            supervision.message(failed, now=now)
        elif isinstance(message, protocol.InputTaken):
            if self._taken is not None:
                self._taken.set()
        elif isinstance(message, protocol.Bye):
            self._said_bye(message)
        elif isinstance(message, protocol.TreeLeft):
            self._tree_left = message
            self._lost(f"the session ended: {protocol.BYE_TEXT[protocol.ByeReason.TREE]}")

    async def _feed_frames(
        self, stdin: bytes | StreamedInput | Terminal | None, scope: anyio.CancelScope
    ) -> None:
        """FRAMED input: a chunk at a time, each sent once the agent took the last; then
        its end (at once for no input: the command reads end-of-file, as from /dev/null)."""
        with scope:
            if isinstance(stdin, bytes):
                for at in range(0, len(stdin), CHUNK):
                    await self._input(stdin[at : at + CHUNK])
            elif isinstance(stdin, StreamedInput):
                while chunk := await _read_source(stdin.fd):
                    await self._input(chunk)
            await self._send(protocol.input_frame(b""))

    async def _input(self, chunk: bytes) -> None:
        self._taken = anyio.Event()
        await self._send(protocol.input_frame(chunk))
        await self._taken.wait()


def _tree_left(message: protocol.TreeLeft) -> str:
    count = f"{message.count} of them" if message.count else "some"
    return (
        f"the command's processes could not all be killed ({count} still alive at the "
        "bound): the session ended rather than let them meet the next command"
    )


def _ints(fds: list[int]) -> bytes:
    import array

    return array.array("i", fds).tobytes()


async def _read_source(fd: int) -> bytes:
    """A chunk of a caller's descriptor (b"": its end, or an error); waited for where it can
    be (see `feed`)."""
    polled = pollable(fd)
    while True:
        if polled:
            await anyio.wait_readable(fd)
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            continue
        except OSError:
            return b""


def _host_stdio(spec: SpawnSpec) -> tuple[StdinPipe, int, int, list[int]]:
    """The command's stdio as in `submission.submit`: /dev/null or a pipe the host feeds,
    and two output pipes the host reads; the ends for the agent, to attach and close."""
    remote: list[int] = []
    if spec.stdin is None:
        remote.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        stdin = StdinPipe(None)
    else:
        stdin_r, stdin_w = os.pipe()
        remote.append(stdin_r)
        os.set_blocking(stdin_w, False)
        stdin = StdinPipe(stdin_w)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    remote += [out_w, err_w]
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
    return stdin, out_r, err_r, remote
