"""What `--stdin none|inherit|FILE` gives a command (`run`, `session run`). Standard library
only: the session client uses it."""

from __future__ import annotations

import contextlib
import os


class UnreadableInput(Exception):
    """`--stdin FILE` names a file that cannot be read (the message says why)."""


def input_fd(choice: str | None, files: contextlib.ExitStack) -> int | None:
    """The descriptor streamed to the command as its input (this process's stdin, or FILE
    opened here and closed by `files`), or None (/dev/null). By default this process's
    stdin unless it is a terminal or closed: a command started from an interactive shell
    does not wait for typing; an agent host's pipe reaches it."""
    if choice is None:
        choice = "none" if _terminal_or_closed(0) else "inherit"
    if choice == "none":
        return None
    if choice == "inherit":
        return 0 if is_open(0) else None
    try:
        handle = files.enter_context(open(os.path.expanduser(choice), "rb"))  # noqa: SIM115
    except OSError as error:
        raise UnreadableInput(f"cannot read {choice!r}: {error.strerror or error}") from None
    return handle.fileno()


def is_open(fd: int) -> bool:
    """Whether this process has a descriptor `fd` (the CLI's stdin may be closed)."""
    with contextlib.suppress(OSError):
        os.fstat(fd)
        return True
    return False


def _terminal_or_closed(fd: int) -> bool:
    return not is_open(fd) or os.isatty(fd)
