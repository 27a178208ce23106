"""Where the CLI's sessions live: a private per-user directory of unix sockets, one per
session's supervisor (see `session_supervisor`), and the checks both ends make.

The directory is `$XDG_RUNTIME_DIR/mechasandbox/sessions` when `XDG_RUNTIME_DIR` is this
user's own, private directory, else `/tmp/mechasandbox-UID/sessions`. Every directory from
the `mechasandbox` one down is created with mode 0700 and checked as the probe cache checks
its own (`private_files.private_to_user`: this user's, of its type, and nobody else may
read or write it; never followed through a symbolic link): a directory or socket that fails
is refused, never repaired (someone else made `/tmp/mechasandbox-UID` first: use
`XDG_RUNTIME_DIR`). A socket is this user's, mode 0600; a connection is served only when
the peer's uid (SO_PEERCRED) is this process's, and a client talks only to a supervisor of
its own uid.

Standard library only, and what cannot be used raises `Unreachable` (not a `returns`
Result, whose import costs `session run` more than the rest of its start-up): the session
client imports this module (`session_client`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import struct

from mechasandbox.private_files import private_to_user

_ID = re.compile(r"[0-9a-f]{16}")
# sockaddr_un's sun_path (108 bytes on Linux, 104 on macOS), its terminating NUL included.
MAX_SOCKET_PATH = 104


class Unreachable(Exception):
    """Why the sessions' directory, or a session's socket, cannot be used (its message)."""


def runtime_base(environ: dict[str, str] | None = None) -> str:
    """The directory that holds this user's `mechasandbox` runtime directory."""
    env = dict(os.environ) if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        with contextlib.suppress(OSError):
            if private_to_user(os.lstat(runtime), stat.S_IFDIR):
                return os.path.join(runtime, "mechasandbox")
    return f"/tmp/mechasandbox-{os.geteuid()}"


def sessions_dir(*, create: bool) -> str:
    """The sessions directory, checked (made first when `create`); `Unreachable` says why
    it cannot be used."""
    base = runtime_base()
    directory = os.path.join(base, "sessions")
    for path in (base, directory):
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise Unreachable(f"{path} does not exist (no session was started)") from None
        except OSError as error:
            raise Unreachable(f"{path}: {error.strerror}") from None
        if not private_to_user(info, stat.S_IFDIR):
            raise Unreachable(
                f"{path} is not a private directory of this user's (owner uid "
                f"{info.st_uid}, mode {stat.filemode(info.st_mode)}): refused; remove it, "
                "or set XDG_RUNTIME_DIR to a directory of your own"
            )
    return directory


def valid_id(session_id: str) -> bool:
    return _ID.fullmatch(session_id) is not None


def socket_path(directory: str, session_id: str) -> str:
    return os.path.join(directory, f"{session_id}.sock")


def log_path(directory: str, session_id: str) -> str:
    """The supervisor's stdout and stderr: removed when it ends as it should (stop, idle,
    lifetime, the session's own end, a signal); what a crashed one said stays, the last
    crash's only (`prune_logs`)."""
    return os.path.join(directory, f"{session_id}.log")


def prune_logs(directory: str, *, older_than_s: float) -> None:
    """Remove the logs of supervisors that died without removing theirs (no socket, not
    written for `older_than_s`: not one that is starting), all but the newest."""
    import time

    dead: list[tuple[float, str]] = []
    now = time.time()
    with os.scandir(directory) as entries:
        for entry in entries:
            session_id = entry.name.removesuffix(".log")
            if session_id == entry.name or os.path.lexists(socket_path(directory, session_id)):
                continue
            try:
                written = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if now - written > older_than_s:
                dead.append((written, entry.path))
    for _, path in sorted(dead)[:-1]:
        with contextlib.suppress(OSError):
            os.unlink(path)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def connect(session_id: str) -> socket.socket:
    """A connection to the supervisor of session `session_id`, checked: the socket this
    user's and private, the peer this user. `Unreachable` says why there is none."""
    if not valid_id(session_id):
        raise Unreachable(f"{session_id!r} is not a session id (16 hexadecimal digits)")
    path = socket_path(sessions_dir(create=False), session_id)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise Unreachable(f"no session {session_id} (it ended, or was never started)") from None
    except OSError as error:
        raise Unreachable(f"{path}: {error.strerror}") from None
    if not private_to_user(info, stat.S_IFSOCK):
        raise Unreachable(f"{path} is not a private socket of this user's: refused")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as error:
        sock.close()
        if isinstance(error, ConnectionRefusedError):
            with contextlib.suppress(OSError):
                os.unlink(path)  # its supervisor is gone
            raise Unreachable(f"no session {session_id} (its supervisor is gone)") from None
        raise Unreachable(f"cannot reach session {session_id}: {error.strerror}") from None
    if peer_uid(sock) != os.geteuid():
        sock.close()
        raise Unreachable(f"session {session_id}'s socket is served by another user: refused")
    return sock
