"""A child hook that leaves bytes to read on a file descriptor of the process about to exec.

bwrap reads two things of a run from descriptors rather than from its argv or environment:
its seccomp program (`--seccomp FD`) and the command's environment as further arguments
(`--args FD`, NUL-separated). Both are this hook, once per descriptor, in the order given.

The bytes go into an anonymous memory file (`memfd_create`), rewound and moved onto the
descriptor just before exec: nothing on disk to clean up or race, no size limit of a pipe
buffer to plan around, and readable only as the process itself is (its /proc/PID/fd
needs the rights of a tracer). The reader closes it once read (bwrap does).

Standard library only: the spawn helper imports this module in every child it hooks.
"""

from __future__ import annotations

import errno
import fcntl
import os

from mechasandbox.runner import native

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the spawn helper does not import `typing`
if TYPE_CHECKING:
    from typing import Any

TARGET = "mechasandbox.runner.fd_data:pass_data"


def argument(fd: int, data: bytes) -> dict[str, Any]:
    """The hook's JSON argument: `data` readable on `fd` when the process execs."""
    return {"fd": fd, "data": data.hex()}


def encode(value: Any, records: native.Records) -> None:
    """`pass_data` for the exec shim (see `runner.native`), which does the same."""
    records.data_on_fd(int(value["fd"]), bytes.fromhex(str(value["data"])))


native.register(TARGET, encode)


def pass_data(value: Any) -> None:
    """Spawn-helper child hook: make `data` readable from the start on descriptor `fd`.

    The descriptor number must be free: the helper closes everything above stderr except
    its own close-on-exec report pipe, so a clash fails the spawn (EBUSY) instead of
    clobbering that pipe.
    """
    target = int(value["fd"])
    data = bytes.fromhex(str(value["data"]))
    try:
        fcntl.fcntl(target, fcntl.F_GETFD)
    except OSError as error:
        if error.errno != errno.EBADF:
            raise
    else:
        raise OSError(errno.EBUSY, f"file descriptor {target} is already open")
    memory = os.memfd_create("mechasandbox-data", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(memory, view) :]
        os.lseek(memory, 0, os.SEEK_SET)
    except BaseException:
        os.close(memory)
        raise
    if memory != target:
        os.dup2(memory, target, inheritable=True)
        os.close(memory)
    else:
        os.set_inheritable(memory, True)
