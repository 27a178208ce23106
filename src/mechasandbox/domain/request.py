"""What the caller asks to run."""

from __future__ import annotations

import attrs


def _argv(values: object) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise TypeError("argv must be a sequence of strings (no implicit shell)")
    return tuple(str(v) for v in values)


@attrs.frozen(kw_only=True)
class RunRequest:
    """One command: argv (never a shell string), its workspace, extra environment, stdin.

    `workspace` is the command's working directory and its writable tree.
    """

    argv: tuple[str, ...] = attrs.field(converter=_argv)
    workspace: str
    stdin: bytes | None = None

    @argv.validator
    def _non_empty(self, _attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
        if not value or not value[0]:
            raise ValueError("argv must name a command")
