"""When a file's stamp may stand for its content: what the host remembers between runs (a
directory's listing, a parsed configuration file) is reused while the stamp it was taken
with is unchanged.

A stamp holds the ctime, which a command cannot set back (unlike the mtime, `touch -d`).
File system clocks are coarse: a change made in the same clock tick as the look leaves the
ctime as it was, so a stamp younger than `SETTLE_NS` is not trusted (whatever was read with
it is read again next time). Two seconds covers file systems that keep whole seconds (or
two: FAT) as well as those that keep a kernel tick.
"""

from __future__ import annotations

import os
import stat
import time

SETTLE_NS = 2_000_000_000

Stamp = tuple[int, int, int]  # (device, inode, ctime) of a directory


def settled(ctime_ns: int) -> bool:
    """Whether a stamp with this ctime may be trusted next time (see the module)."""
    return ctime_ns < time.time_ns() - SETTLE_NS


def directory_stamp(path: str, *, follow: bool = True) -> Stamp | None:
    """The stamp of the directory at `path` (`follow`: through a symlink at `path`, as the
    lookup of a path below it goes); None where there is no directory (missing, or not a
    directory). Other errors (EACCES, ELOOP) raise OSError."""
    try:
        info = os.stat(path) if follow else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISDIR(info.st_mode):
        return None
    return (info.st_dev, info.st_ino, info.st_ctime_ns)
