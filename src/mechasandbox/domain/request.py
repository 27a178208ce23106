"""What the caller asks to run."""

from __future__ import annotations

import attrs

from mechasandbox.domain.events import OutputSink


def argv_problem(values: object) -> str | None:
    """Why `values` cannot be a command line, if it cannot: a string (`"ls -la"` would be
    taken apart letter by letter: there is no implicit shell), no command, or a NUL byte,
    which no argument of an `execve` can carry (it would end the argument early)."""
    if isinstance(values, str) or not isinstance(values, list | tuple):
        return (
            f"must be a sequence of strings, got {type(values).__name__} {values!r:.60} "
            "(no implicit shell: write ['sh', '-c', '...'] to have one)"
        )
    if not values or not str(values[0]):
        return "must name a command"
    for index, value in enumerate(values):
        if "\0" in str(value):
            return f"argument {index} holds a NUL byte, which no command line can carry"
    return None


def workspace_problem(path: object) -> str | None:
    """Why `path` cannot be a workspace before anything looks at it, if it cannot."""
    if not isinstance(path, str) or not path:
        return f"expected a directory, got {path!r}"
    if "\0" in path:
        return f"{path!r} holds a NUL byte, which no path can"
    return None


def _argv(values: object) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise TypeError("argv must be a sequence of strings (no implicit shell)")
    return tuple(str(v) for v in values)


@attrs.frozen
class StreamedInput:
    """The command's input read from the open file descriptor `fd` while it runs (a pipe,
    a socket, a file, a terminal), as the command takes it: one chunk at a time, so any
    size goes through in bounded memory. The descriptor itself never enters the sandbox
    (a terminal would let the command type into the caller's shell, a socket would be a
    way out): what it gives is written to a pipe of the run's own. It stays the caller's:
    never closed, never made non-blocking. When the run ends first, up to one chunk read
    from it is lost."""

    fd: int


@attrs.frozen
class Terminal:
    """The command's stdin, stdout and stderr are `fd`, the slave end of a pseudo-terminal
    the caller opened for this run (`os.openpty()`), and it is the controlling terminal of
    the command's session: an interactive program (a shell, an editor) sees a terminal.
    The caller keeps the master end: it writes the input there and reads the output, which
    the run's result does not hold (its stdout and stderr stay empty). Never the caller's
    own terminal: a command's TIOCSTI then reaches only this pty's input, which the command
    itself reads. Not every backend can hand it in (a container backend refuses it)."""

    fd: int


def piped(stdin: bytes | StreamedInput | Terminal | None) -> bytes | StreamedInput | None:
    """`stdin` for a backend that refuses a `Terminal` before it gets this far."""
    if isinstance(stdin, Terminal):
        raise TypeError("a terminal reached a backend that refuses one")
    return stdin


def terminal_refused(backend: str) -> str:
    """What a backend that cannot hand a `Terminal` in says (with `field="stdin"`)."""
    return (
        f"the {backend} backend does not give the command a terminal (--tty, "
        "stdin=Terminal(...)): use bubblewrap, landlock or process, or run without one"
    )


@attrs.frozen(kw_only=True)
class RunRequest:
    """One command: argv (never a shell string), its workspace, its stdin, and where its
    output goes as it comes.

    `workspace` is the command's working directory and its writable tree. `stdin`: bytes,
    a descriptor to stream from, or a terminal for all its stdio (None: /dev/null).
    `on_output`: called with each chunk of output the run keeps, as it comes (see
    `domain.events`); a backend that does not stream leaves it to the caller (`Sandbox`
    then passes the collected output at the end).
    """

    argv: tuple[str, ...] = attrs.field(converter=_argv)
    workspace: str = attrs.field()
    stdin: bytes | StreamedInput | Terminal | None = None
    on_output: OutputSink | None = attrs.field(default=None, eq=False, repr=False)

    @argv.validator
    def _valid_argv(
        self, _attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
    ) -> None:
        problem = argv_problem(value)
        if problem is not None:
            raise ValueError(problem)

    @workspace.validator
    def _valid_workspace(self, _attribute: attrs.Attribute[str], value: str) -> None:
        problem = workspace_problem(value)
        if problem is not None:
            raise ValueError(problem)
