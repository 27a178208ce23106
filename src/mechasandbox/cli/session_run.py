"""`mechasandbox session run ID [OPTIONS] -- COMMAND`: the client.

It hands the session's supervisor this process's stdout and stderr (and the stdin to
stream) and waits for the command's exit status: the output is written by the supervisor
with `run`'s own code (see `session_verb`). SIGINT and SIGTERM are passed on.

A shell-driven agent pays this program's start-up on every command of its session, so the
client keeps to the standard library and the session's socket (`session_runtime`,
`runner.framing`, `cli.parser`, `cli.stdin_choice`; no `typing`, `attrs` or `returns`). What
a failure prints is `run`'s (`verbs.fail`), imported only then, and a per-command limit is
checked by `config.validation` only when one is given.
"""

from __future__ import annotations

import contextlib
import signal
import sys

from mechasandbox.cli import session_runtime
from mechasandbox.cli.parser import LIMIT_OPTIONS, Parser, UsageError
from mechasandbox.cli.stdin_choice import UnreadableInput, input_fd
from mechasandbox.runner import framing

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: see the module's docstring
if TYPE_CHECKING:
    import socket
    from collections.abc import Iterator
    from typing import Any

BACKEND = "session"  # what a failure's --json says the backend was


def parser() -> Parser:
    parser = Parser(prog="mechasandbox session run")
    add = parser.add_argument
    add("session", metavar="ID", help="the id `session start` printed")
    add("--json", action="store_true", help="print one JSON object instead of the output")
    add("--jsonl", action="store_true", help="print the run as JSON lines as it goes")
    add("--verbose", action="store_true", help="also print the notes on stderr")
    add("--stdin", default=None, metavar="none|inherit|FILE", help="the command's input")
    for option in LIMIT_OPTIONS:  # this command's own limits (the session's cgroup stays)
        add(option, default=None, help=f"this command's {option.removeprefix('--')}")
    add("command", nargs="*", help="-- COMMAND [ARG...]")
    return parser


def _fail(kind: str, problem: str, source: str, *, as_json: bool, jsonl: bool) -> int:
    """`problem` printed as `run` prints a failure (`verbs.fail`, JSON lines first): `kind`
    "config" (ConfigInvalid, at `source`) or "unreachable" (BackendFailed: the session
    cannot be reached)."""
    from mechasandbox.cli.verbs import fail
    from mechasandbox.domain.errors import BackendFailed, ConfigInvalid, SandboxError

    error: SandboxError = (
        ConfigInvalid(problem=problem, source=source)
        if kind == "config"
        else BackendFailed(backend=BACKEND, reason=problem)
    )
    return fail(error, as_json=as_json, backend=BACKEND, jsonl=jsonl)


def _limits(args: Any) -> list[tuple[str, float | None]] | tuple[str, str]:
    """The limits given, checked: (attribute, value) each; or (the option, its problem)."""
    given = [
        (option, text)
        for option in LIMIT_OPTIONS
        if (text := getattr(args, option.removeprefix("--").replace("-", "_"))) is not None
    ]
    if not given:
        return []
    from returns.result import Failure

    from mechasandbox.config.validation import LIMIT_RULES

    rules = {rule.option: rule for rule in LIMIT_RULES}
    limits: list[tuple[str, float | None]] = []
    for option, text in given:
        checked = rules[option].checked(text)
        if isinstance(checked, Failure):
            return option, str(checked.failure())
        limits.append((rules[option].attribute, checked.unwrap()))
    return limits


def run(raw: list[str]) -> int:
    # `run ID [OPTIONS] -- COMMAND`: the options may follow the id (before the `--`)
    before, after = (
        (raw[: raw.index("--")], raw[raw.index("--") + 1 :]) if "--" in raw else (raw, [])
    )
    try:
        args = parser().parse_args(before)
    except UsageError as error:  # the words alone say how to answer, as for `run`
        return _fail(
            "config", str(error), "command line", as_json="--json" in raw, jsonl="--jsonl" in raw
        )
    # From here on the options parsed (not the command's own words) say how to answer.
    as_json, jsonl = args.json, args.jsonl and not args.json
    command = list(args.command) + after
    problem: str | None = None
    if not command:
        problem = "no command given (mechasandbox session run ID [OPTIONS] -- COMMAND)"
    elif args.json and args.jsonl:
        problem = "--json and --jsonl exclude each other"
    if problem is not None:
        return _fail("config", problem, "command line", as_json=as_json, jsonl=jsonl)
    limits = _limits(args)
    if isinstance(limits, tuple):
        return _fail("config", limits[1], limits[0], as_json=as_json, jsonl=jsonl)
    try:
        connected = session_runtime.connect(args.session)
    except session_runtime.Unreachable as unreachable:
        return _fail("unreachable", str(unreachable), "", as_json=as_json, jsonl=jsonl)
    with connected as sock, contextlib.ExitStack() as files:
        try:
            stdin = input_fd(args.stdin, files)
        except UnreadableInput as error:
            return _fail("config", str(error), "--stdin", as_json=as_json, jsonl=jsonl)
        request = {
            "op": "run",
            "argv": command,
            "limits": limits,
            "json": args.json,
            "jsonl": args.jsonl,
            "verbose": args.verbose,
            "stdin": stdin is not None,
        }
        sys.stdout.flush()
        sys.stderr.flush()
        fds = ([stdin] if stdin is not None else []) + [1, 2]
        framing.send(sock, request, fds)
        with _passing_signals_to(sock):
            try:
                answer, _ = framing.receive(sock)
            except (OSError, framing.FrameError):
                answer = {}
    status = answer.get("status")
    if not isinstance(status, int):
        why = "the session's supervisor went away during the command (the session ended)"
        return _fail("unreachable", why, "", as_json=as_json, jsonl=jsonl)
    return status


@contextlib.contextmanager
def _passing_signals_to(sock: socket.socket) -> Iterator[None]:
    def interrupt(number: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            framing.send(sock, {"op": "interrupt", "signal": number})

    previous = {n: signal.signal(n, interrupt) for n in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
