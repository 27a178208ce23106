"""Whether a file is this user's own and private: the check a per-user file of
mechasandbox's passes before it is trusted (the probe cache's records, the CLI sessions'
directory and sockets). Standard library only: the session client imports it."""

from __future__ import annotations

import os
import stat


def private_to_user(info: os.stat_result, kind: int) -> bool:
    """Ours, of the expected type, and nobody else may write (or read) it."""
    return (
        stat.S_IFMT(info.st_mode) == kind
        and info.st_uid == os.geteuid()
        and not info.st_mode & 0o077
    )
