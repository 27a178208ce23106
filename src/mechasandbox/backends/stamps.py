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

import time

SETTLE_NS = 2_000_000_000


def settled(ctime_ns: int) -> bool:
    """Whether a stamp with this ctime may be trusted next time (see the module)."""
    return ctime_ns < time.time_ns() - SETTLE_NS
