"""Loading a seccomp program into the calling process: the child-side half of
`seccomp` (which builds the program and imports no ctypes, so that hosts that only build
it, like a bubblewrap CLI call, do not pay for ctypes)."""

from __future__ import annotations

import ctypes
import functools
import os


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


@functools.cache
def load_libc() -> ctypes.CDLL:
    """Loaded once per process (in the spawn helper, before it forks the children)."""
    return ctypes.CDLL(None, use_errno=True)


def install(program: bytes) -> None:
    """Load `program` into the calling thread's process (with no_new_privs, which the kernel
    requires of an unprivileged caller). Irreversible; meant for a child before exec."""
    if len(program) % 8 or not program:
        raise ValueError("a BPF program is a non-empty array of 8-byte instructions")
    libc = load_libc()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
