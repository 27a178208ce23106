"""How a command line too long for bwrap's own argv still reaches the command.

bwrap parses at most 9000 arguments (MAX_ARGS, its options and those it reads with
`--args` included), and every argument after `--` must be on its own argv: `--args` data
ends at `--`. A command the kernel runs bare (10,000 arguments, 2 MiB of them) would fail
inside bwrap's option parsing, or bwrap's own exec (E2BIG: its options on top of the
command line). Such a command goes in a file descriptor instead: bwrap runs
`/bin/sh /dev/fd/COMMAND_FD`, a script that sets the arguments quoted and execs them, so
the only exec that carries the whole command line is the command's own, under the same
kernel limits as a bare run (checked before the run, `command_line`). A command that fits
keeps the plain `-- COMMAND ARG...` form.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mechasandbox.backends.command_line import argument_space, exec_problem

COMMAND_FD = 5
BWRAP_MAX_ARGS = 9000  # bubblewrap.c MAX_ARGS
# Of the room for bwrap's own exec: what its options may take at most, leaving the rest to
# the command line that follows them (its options are a few kilobytes; deep policies more).
_BWRAP_EXEC_SHARE = 2


def fits_bwrap(options: Sequence[str], fd_arguments: int, command: Sequence[str]) -> bool:
    """Whether `bwrap OPTIONS -- COMMAND` can be bwrap's own argv."""
    parsed = len(options) - 1 + fd_arguments + 1 + len(command)  # argv[0] is not counted
    if parsed > BWRAP_MAX_ARGS:
        return False
    space = argument_space() // _BWRAP_EXEC_SHARE
    return exec_problem([*options, "--", *command], (), space=space) is None


def _quoted(argument: str) -> bytes:
    return b"'" + os.fsencode(argument).replace(b"'", b"'\\''") + b"'"


def command_script(command: Sequence[str]) -> bytes:
    """The script `/bin/sh` runs from COMMAND_FD: close it, set the arguments, exec them."""
    arguments = b" ".join(_quoted(argument) for argument in command)
    return b'exec %d<&-\nset -- %s\nexec "$@"\n' % (COMMAND_FD, arguments)


TRAMPOLINE = ("/bin/sh", f"/dev/fd/{COMMAND_FD}")
