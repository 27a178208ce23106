"""The session agent's control protocol (the host's side; `shim/session_agent.c` is the
agent's, and mirrors these names).

A session's sandbox holds one long-lived process of ours, the agent, that runs each command
on request (see docs/sessions.md). The channel is a byte stream of frames: a 4-byte
big-endian length (of what follows), a type byte, the body (numbers little-endian, both
ends are one host). Host to agent:

- RUN: the stdio mode byte, then the command's records (`native.encode_records`: what the
  one-shot exec shim carries out, so a command in a session is set up by the same records
  and the same C code). `StdioMode.FDS`: its stdin, stdout and stderr are attached to the
  frame (SCM_RIGHTS); `StdioMode.FRAMED`: the agent makes the pipes, sends the output as
  OUTPUT frames and fills the input from INPUT frames (a channel that cannot carry
  descriptors: pipes, a container runtime that passes no host descriptor).
- INPUT: bytes for the command's stdin (FRAMED); empty: its end. The host sends the next
  chunk only once INPUT_TAKEN came for the last, so the agent holds one chunk at most.
- SIGNAL (u32): a signal to the command's first process.
- KILL: the command's whole tree killed now (the deadline, the caller's cancellation).

Agent to host: HELLO (u32 protocol, u32 pid) once; per command STARTED (u32 pid, as the
agent sees it), OUTPUT (u8 stream 1|2, bytes; a stream's end is an OUTPUT without bytes),
INPUT_TAKEN, and its last word, EXITED (i32 wait status, u64 CPU µs of its tree, u64 peak
RSS bytes) or ERROR (i32 errno, the stage text: it never ran, or the agent refused the
frame); BYE (u8 reason) when the agent ends on its own. The channel closing ends the agent,
killing the command under way first.
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import signal
import struct
import time

import attrs

from mechasandbox.runner import native

SESSION_PROTOCOL = 1
# The agent's path: `$MECHASANDBOX_SESSION_AGENT` ("off": none), else the one built beside
# the exec shim (`make shim`).
AGENT_ENV = "MECHASANDBOX_SESSION_AGENT"
AGENT_NAME = "mechasandbox-agent"
AGENT_SOURCE = os.path.join(os.path.dirname(native.SHIM_SOURCE), "session_agent.c")
DEFAULT_AGENT = os.path.join(os.path.dirname(native.SHIM_SOURCE), AGENT_NAME)

# host -> agent
RUN = b"R"
INPUT = b"I"
SIGNAL = b"S"
KILL = b"K"
# agent -> host
HELLO = ord("H")
STARTED = ord("P")
OUTPUT = ord("O")
INPUT_TAKEN = ord("A")
EXITED = ord("X")
ERROR = ord("E")
BYE = ord("B")

MAX_FRAME = native.MAX_FRAME + 16
_HEADER = struct.Struct("!I")


class StdioMode(enum.IntEnum):
    """How a command's stdio reaches it (see the module's docstring)."""

    FDS = 0
    FRAMED = 1


class ByeReason(enum.IntEnum):
    """Why the agent ended on its own."""

    IDLE = 1
    LIFETIME = 2
    SIGNAL = 3


BYE_TEXT: dict[int, str] = {
    ByeReason.IDLE: "its idle timeout passed",
    ByeReason.LIFETIME: "its maximum lifetime passed",
    ByeReason.SIGNAL: "the agent was told to stop (a signal)",
}


def _frame(kind: bytes, body: bytes = b"") -> bytes:
    return _HEADER.pack(len(body) + 1) + kind + body


def run_frame(records: bytes, mode: StdioMode) -> bytes:
    """RUN: `records` from `native.encode_records`."""
    return _frame(RUN, bytes((mode,)) + records)


def input_frame(data: bytes) -> bytes:
    return _frame(INPUT, data)


def signal_frame(signum: int) -> bytes:
    return _frame(SIGNAL, struct.pack("<I", signum))


def kill_frame() -> bytes:
    return _frame(KILL)


# --- what the agent says ------------------------------------------------------------------
@attrs.frozen
class Hello:
    protocol: int
    pid: int


@attrs.frozen
class Started:
    pid: int


@attrs.frozen
class Output:
    stream: int  # 1: stdout, 2: stderr
    data: bytes  # b"": the stream's end


@attrs.frozen
class InputTaken:
    pass


@attrs.frozen
class Exited:
    status: int  # as waitpid gives it
    cpu_s: float
    max_rss_bytes: int


@attrs.frozen
class Error:
    errno: int
    stage: str


@attrs.frozen
class Bye:
    reason: int


AgentMessage = Hello | Started | Output | InputTaken | Exited | Error | Bye


class ProtocolError(Exception):
    """The agent sent something that is not a frame of this protocol."""


def _message(kind: int, body: bytes) -> AgentMessage:
    try:
        if kind == OUTPUT:
            return Output(body[0], body[1:])
        if kind == EXITED:
            status, cpu_us, rss = struct.unpack("<iQQ", body)
            return Exited(status, cpu_us / 1e6, rss)
        if kind == STARTED:
            return Started(struct.unpack("<I", body)[0])
        if kind == INPUT_TAKEN:
            return InputTaken()
        if kind == ERROR:
            return Error(struct.unpack("<i", body[:4])[0], body[4:].decode(errors="replace"))
        if kind == HELLO:
            protocol, pid = struct.unpack("<II", body)
            return Hello(protocol, pid)
        if kind == BYE:
            return Bye(body[0])
    except (struct.error, IndexError) as error:
        raise ProtocolError(f"a malformed frame of type {chr(kind)!r}: {error}") from error
    raise ProtocolError(f"an unknown frame of type {kind}")


class FrameReader:
    """Frames out of the channel's bytes as they come, in any pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[AgentMessage]:
        self._buffer += data
        messages: list[AgentMessage] = []
        at = 0
        buffer = self._buffer
        while len(buffer) - at >= 4:
            (length,) = _HEADER.unpack_from(buffer, at)
            if length == 0 or length > MAX_FRAME:
                raise ProtocolError(f"a frame of {length} bytes")
            if len(buffer) - at - 4 < length:
                break
            kind = buffer[at + 4]
            messages.append(_message(kind, bytes(buffer[at + 5 : at + 4 + length])))
            at += 4 + length
        del buffer[:at]
        return messages


# --- the agent's binary ---------------------------------------------------------------------
def agent_path() -> str | None:
    """The agent this host uses, None when there is none to execute (see `AGENT_ENV`)."""
    configured = os.environ.get(AGENT_ENV, "")
    if configured == "off":
        return None
    path = configured or DEFAULT_AGENT
    if os.path.isabs(path) and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


_SPOKEN: dict[tuple[str, int, int], bool] = {}


def agent_speaks(path: str, timeout_s: float = 2.0) -> bool:
    """Whether the agent at `path` answers `--protocol` with our session protocol and
    records (a binary left from an older build is not used); remembered per binary."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    key = (path, info.st_ino, info.st_mtime_ns)
    if key in _SPOKEN:
        return _SPOKEN[key]
    expected = f"session {SESSION_PROTOCOL} records {native.PROTOCOL}".encode()
    read_end, write_end = os.pipe()
    answer = b""
    try:
        try:
            pid = os.posix_spawn(
                path, [path, "--protocol"], {}, file_actions=[(os.POSIX_SPAWN_DUP2, write_end, 1)]
            )
        finally:
            os.close(write_end)
        deadline = time.monotonic() + timeout_s
        while len(answer) < 64:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(read_end, 64)
            if not chunk:
                break
            answer += chunk
        os.waitpid(pid, 0)
    except OSError:
        return False
    finally:
        os.close(read_end)
    _SPOKEN[key] = answer.strip() == expected
    return _SPOKEN[key]
