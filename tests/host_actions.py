"""What a test does on the host while a sandboxed command runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def act_when_started(
    marker: Path, action: Callable[[], None], timeout_s: float = 60
) -> threading.Thread:
    """Calls `action` on the host in a thread once the command has made `marker` (or after
    `timeout_s`); the caller joins the thread after the run."""

    def wait_then_act() -> None:
        deadline = time.monotonic() + timeout_s
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        action()

    thread = threading.Thread(target=wait_then_act)
    thread.start()
    return thread


# A library whose constructor records, in a file outside the sandbox's reach, which program
# loaded it: on the host, that is a launcher (bwrap, an engine's CLI); inside a sandbox, the
# path is not there.
MARKING_LIBRARY = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    char exe[512];
    ssize_t length = readlink("/proc/self/exe", exe, sizeof exe - 1);
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0 && length > 0) {
        exe[length] = '\n';
        (void)!write(fd, exe, (size_t)length + 1);
    }
    if (fd >= 0)
        close(fd);
}
"""


def marking_library(directory: Path, marker: Path) -> Path:
    """A shared library (built in `directory`) that appends the path of each program that
    loads it to `marker`; skips the test when there is no C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the preload library with (CI has gcc)")
    source = directory / "mark.c"
    source.write_text(MARKING_LIBRARY)
    library = directory / "libmark.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(library), str(source)],
        check=True,
        capture_output=True,
    )
    return library


def processes_running(program: str, argument: Path) -> list[int]:
    """The host's processes of `program` (argv[0]'s base name) with `argument` on argv: a
    run's launcher, found by its workspace."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if os.path.basename(argv[0]) == os.fsencode(program) and any(
                os.fsencode(argument) in part for part in argv
            ):
                found.append(int(entry.name))
    return found
