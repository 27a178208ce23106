"""Whether a command line fits what the kernel's `execve` takes, said before anything runs.

Linux refuses an exec (E2BIG) whose single argument or environment string is longer than
MAX_ARG_STRLEN (32 pages, with its NUL), or whose strings and pointers together exceed the
room it gives them: a quarter of the stack limit, at least 32 pages and at most 6 MiB
(`bprm_stack_limits` in fs/exec.c; the executable's path is copied there too). The same
limits hold bare and sandboxed: the check is on the exec that starts the command itself
(bubblewrap's own exec stays small, see `bwrap_compiler`), and its refusal is a
`ConfigInvalid` that names the limit, not a command that "is not executable".
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable

from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.units import format_size

_PAGE = 4096
MAX_ARG_STRLEN = 32 * _PAGE
_MIN_SPACE = 32 * _PAGE  # ARG_MAX in the kernel's headers: the floor
_MAX_SPACE = 6 * 1024 * 1024  # 3/4 of _STK_LIM (8 MiB): the ceiling
_POINTER = 8


def argument_space(stack_limit: int | None = None) -> int:
    """Bytes an exec may give its strings and pointers here (the stack limit is inherited
    by every run: the runner does not change it)."""
    if stack_limit is None:
        stack_limit = resource.getrlimit(resource.RLIMIT_STACK)[0]
    if stack_limit == resource.RLIM_INFINITY or stack_limit < 0:
        return _MAX_SPACE
    return max(_MIN_SPACE, min(_MAX_SPACE, stack_limit // 4))


def _size(text: str) -> int:
    return len(os.fsencode(text)) + 1


def exec_problem(
    argv: Iterable[str],
    env: Iterable[tuple[str, str]],
    *,
    executable: str | None = None,
    space: int | None = None,
) -> ConfigInvalid | None:
    """Why the kernel would refuse to exec `argv` with `env`, or None."""
    arguments = list(argv)
    strings = [_size(executable or arguments[0])]
    for index, argument in enumerate(arguments):
        size = _size(argument)
        if size > MAX_ARG_STRLEN:
            return ConfigInvalid(
                problem=(
                    f"argument {index} of the command is {size - 1} bytes; the kernel takes "
                    f"at most {MAX_ARG_STRLEN - 1} bytes per argument (MAX_ARG_STRLEN), "
                    "sandboxed or not: pass it in a file or on stdin"
                ),
                field="argv",
            )
        strings.append(size)
    variables = [f"{name}={value}" for name, value in env]
    for variable in variables:
        size = _size(variable)
        if size > MAX_ARG_STRLEN:
            name = variable.partition("=")[0]
            return ConfigInvalid(
                problem=(
                    f"environment variable {name} is {size - 1} bytes; the kernel takes at most "
                    f"{MAX_ARG_STRLEN - 1} bytes per variable (MAX_ARG_STRLEN)"
                ),
                field="environment",
            )
        strings.append(size)
    room = argument_space() if space is None else space
    total = sum(strings) + _POINTER * (max(len(arguments), 1) + len(variables))
    if total > room:
        return ConfigInvalid(
            problem=(
                f"the command line and its environment take {total} bytes "
                f"({len(arguments)} arguments, {len(variables)} variables); the kernel takes "
                f"at most {format_size(room)} ({room} bytes) for one exec here (ARG_MAX: a "
                "quarter of the stack limit, at most 6m), sandboxed or not: pass the data in "
                "a file or on stdin"
            ),
            field="argv",
        )
    return None
