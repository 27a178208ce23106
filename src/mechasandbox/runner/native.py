"""Runs handed to the exec shim (`shim/exec_shim.c`), a warm child that is not Python.

Exec from a process forked from Python tears down the address space it copied, and a warm
child decoding its run and setting up in Python costs as much again; the helper's fork of
the next warm child shares its pages, which it then copies back as it writes them. Where
the shim is built (`make shim`; see docs/architecture.md), the spawn helper starts its
warm children from it with `posix_spawn` instead, and the host hands them runs as a list
of plain records: the system calls `runner.child.exec_run` makes, with their arguments,
in the same order. All the policy logic stays in Python: a hook that the shim should run
natively registers an encoder here (`register`) that turns its argument into records. A
run with a hook that has none, or anything the records cannot carry, goes the Python way.

Frame: a 4-byte big-endian length (as `framing`'s), then records: one op byte, a 4-byte
little-endian length, the payload (numbers little-endian, strings without a NUL).
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import struct
import time

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the spawn helper does not import `typing`
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TypeAlias

    Encoder: TypeAlias = Callable[[Any, "Records"], None]

# The shim's path for the spawn helper: set by the host when it starts the helper; the
# host's own setting of it picks another binary, or "off" for none.
SHIM_ENV = "MECHASANDBOX_EXEC_SHIM"
SHIM_NAME = "mechasandbox-exec"
# (os.path, not pathlib: the spawn helper imports this module, and pathlib costs it ms)
SHIM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim", "exec_shim.c")
DEFAULT_SHIM = os.path.join(os.path.dirname(SHIM_SOURCE), SHIM_NAME)
MAX_FRAME = 8 * 1024 * 1024
# The records' format; the shim says which it speaks (`mechasandbox-exec --protocol`), and
# one that speaks another (a binary left from an older build) is not used.
# 2: record "f" fills a memory file of any size (1: a pipe, at most 64 KiB).
# 3: a rule path that is not there (ENOENT, ENOTDIR, EACCES) is skipped: the host no longer
#    drops the missing ones before (2 skipped ENOENT only).
PROTOCOL = 3
_MASK64 = (1 << 64) - 1


def shim_path() -> str | None:
    """The shim this host uses: `$MECHASANDBOX_EXEC_SHIM` ("off": none), else the one built
    beside this package; None when there is none to execute."""
    configured = os.environ.get(SHIM_ENV, "")
    if configured == "off":
        return None
    path = configured or DEFAULT_SHIM
    if os.path.isabs(path) and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


def speaks_protocol(path: str, timeout_s: float = 2.0) -> bool:
    """Whether the shim at `path` answers `--protocol` with ours (under a millisecond, once
    per spawn helper: it asks before it serves). A binary that does not answer within
    `timeout_s` is killed and not used: the helper must never hang on it."""
    read_end, write_end = os.pipe()
    try:
        try:
            pid = os.posix_spawn(
                path, [path, "--protocol"], {}, file_actions=[(os.POSIX_SPAWN_DUP2, write_end, 1)]
            )
        finally:
            os.close(write_end)
        answer = _read_until_eof(read_end, time.monotonic() + timeout_s)
        if answer is None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    except OSError:
        return False
    finally:
        os.close(read_end)
    if answer is None or os.waitstatus_to_exitcode(status) != 0:
        return False
    return answer.strip() == str(PROTOCOL).encode()


def _read_until_eof(fd: int, deadline: float) -> bytes | None:
    """What `fd` gives until EOF (at most 64 bytes), or None when the deadline passed."""
    answer = b""
    while len(answer) <= 64:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 64)
        if not chunk:
            return answer
        answer += chunk
    return answer


class NotNative(Exception):
    """This run cannot be told to the shim: it goes the Python way."""


_LENGTH = struct.Struct("<I")


def _text(value: object) -> bytes:
    data = os.fsencode(str(value))
    if b"\0" in data:
        raise NotNative("a string with a NUL byte")
    return data


def _texts(op: bytes, values: Iterable[str]) -> bytes:
    """Records `op` for each of `values` at once (an argv is a bwrap run's 160 strings)."""
    encoded = [os.fsencode(value) for value in values]
    if any(b"\0" in data for data in encoded):
        raise NotNative("a string with a NUL byte")
    return b"".join(op + _LENGTH.pack(len(data)) + data for data in encoded)


class Records:
    """The records of one run, in the order they are added (the order the shim follows)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def add(self, op: bytes, payload: bytes = b"") -> None:
        self._parts.append(op + _LENGTH.pack(len(payload)) + payload)

    def add_encoded(self, records: bytes) -> None:
        """Records encoded already (another `Records`' `body`)."""
        self._parts.append(records)

    def add_texts(self, op: bytes, values: Iterable[str]) -> None:
        self._parts.append(_texts(op, values))

    # the system calls, one method each (see exec_shim.c's `carry_out`)
    def chdir(self, path: str) -> None:
        self.add(b"c", _text(path))

    def umask(self, mask: int) -> None:
        self.add(b"u", struct.pack("<I", mask & 0o777))

    def rlimit(self, name: str, soft: int, hard: int) -> None:
        which = getattr(resource, name, None)
        if not isinstance(which, int) or not name.startswith("RLIMIT_"):
            raise NotNative(f"unknown rlimit {name}")
        self.add(b"r", struct.pack("<IQQ", which, soft & _MASK64, hard & _MASK64))

    def drop_capabilities(self) -> None:
        self.add(b"k")

    def no_new_privs(self) -> None:
        self.add(b"n")

    def seccomp(self, program: bytes) -> None:
        self.add(b"s", program)

    def data_on_fd(self, fd: int, data: bytes) -> None:
        self.add(b"f", struct.pack("<I", fd) + data)

    def landlock_ruleset(self, handled_fs: int, handled_net: int, scoped: int, size: int) -> None:
        self.add(b"L", struct.pack("<QQQI", handled_fs, handled_net, scoped, size))

    def landlock_path(self, access: int, path: str) -> None:
        self.add(b"p", struct.pack("<Q", access) + _text(path))

    def landlock_port(self, access: int, port: int) -> None:
        self.add(b"t", struct.pack("<QQ", access, port))

    def landlock_restrict(self, flags: int) -> None:
        self.add(b"R", struct.pack("<I", flags))

    def body(self) -> bytes:
        body = b"".join(self._parts)
        if len(body) > MAX_FRAME:
            raise NotNative("the run does not fit a frame")
        return body

    def frame(self) -> bytes:
        body = self.body()
        return struct.pack("!I", len(body)) + body


_ENCODERS: dict[str, Encoder] = {}


def register(target: str, encoder: Encoder) -> None:
    """Let the shim carry out the hook `target` ("module:function"): `encoder(argument,
    records)` adds what the hook would do, or raises (NotNative) when it cannot."""
    _ENCODERS[target] = encoder


def _hooks(records: Records, hooks: list[Any]) -> None:
    for target, argument in hooks:
        encoder = _ENCODERS.get(target)
        if encoder is None:
            raise NotNative(f"no native form of {target}")
        encoder(argument, records)


def _records(request: dict[str, Any]) -> Records:
    if request.get("terminal"):
        raise NotNative("a controlling terminal to set (see `child.set_controlling_terminal`)")
    executable = str(request.get("executable") or request["argv"][0])
    records = Records()
    records.chdir(request["cwd"])
    records.umask(int(request.get("umask", 0o077)))
    _hooks(records, request.get("ahead", ()))
    for name, soft, hard in request.get("rlimits", ()):
        records.rlimit(str(name), int(soft), int(hard))
    _hooks(records, request.get("hooks", ()))
    records.add_texts(b"a", request["argv"])
    if any(not name or "=" in name for name, _ in request["env"]):
        raise NotNative("an environment name that is empty or has a '='")
    records.add_texts(b"e", [f"{name}={value}" for name, value in request["env"]])
    records.add(b"x", _text(executable))
    return records


def encode(request: dict[str, Any]) -> bytes | None:
    """The shim's frame for a spawn request (see `submission.spawn_request`), for a warm
    child that joined the request's cgroups already; None when it must go the Python way."""
    try:
        return _records(request).frame()
    except Exception:  # NotNative, or anything a hook's argument held: the Python way
        return None


def encode_records(request: dict[str, Any]) -> bytes | None:
    """The records alone (no length): what a session's RUN carries to its agent (see
    `session_protocol`), which carries them out with the shim's code; None when the
    request cannot be told as records."""
    try:
        return _records(request).body()
    except Exception:  # NotNative, or anything a hook's argument held
        return None
