"""`mechasandbox run | shell | doctor | policy | build-shim` (the contract is docs/cli.md).

Each call pays for what its verb needs and no more: modules are imported where they are
used, a `run`'s spawn helper is already starting (see `main`), and most runs take the
one-shot path without an event loop (`oneshot`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING

from returns.result import Failure, Result, Success

from mechasandbox import __version__
from mechasandbox.cli.options import add_run_options, command_of
from mechasandbox.cli.output import exit_status, interrupted, result_object, signal_name
from mechasandbox.cli.parser import Parser, UsageError
from mechasandbox.domain.errors import ConfigInvalid, SandboxError, partial_result

VERBS = ("run", "shell", "policy", "doctor", "build-shim", "session")

if TYPE_CHECKING:
    from mechasandbox.containers import Application
    from mechasandbox.domain.request import StreamedInput, Terminal
    from mechasandbox.domain.result import RunResult
    from mechasandbox.runner.client import SpawnHelperClient
    from mechasandbox.runner.interruption import Interruption


def build_parser(verb: str | None = None) -> Parser:
    """The command line's parser. `verb`: the verb being run, when known; only its options
    are added (argparse spends a few milliseconds adding the run options), the other verbs
    are still known by name."""
    parser = Parser(prog="mechasandbox", description="Run a command under an OS-level sandbox.")
    parser.add_argument("--version", action="version", version=f"mechasandbox {__version__}")
    commands = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)
    run = commands.add_parser("run", help="run a command in the sandbox")
    policy = commands.add_parser("policy", help="print what the backend would do; run nothing")
    shell = commands.add_parser(
        "shell", help="an interactive shell in the sandbox: run --tty -- $SHELL -i"
    )
    for name, verb_parser in (("run", run), ("policy", policy), ("shell", shell)):
        if verb in (None, name) or verb not in VERBS:
            add_run_options(verb_parser, command=name != "shell")
    doctor_parser = commands.add_parser("doctor", help="what each backend enforces here")
    doctor_parser.add_argument("--json", action="store_true", help="print one JSON object")
    doctor_parser.add_argument(
        "--verify",
        action="store_true",
        help="attack each available backend; report which claimed protections held",
    )
    commands.add_parser("build-shim", help="compile the exec shim: faster runs (Linux, needs cc)")
    commands.add_parser(
        "session",
        help="start|run|stop|export|list: one sandbox for many commands (docs/sessions.md)",
    )
    return parser


def fail(error: SandboxError, *, as_json: bool, backend: str, jsonl: bool = False) -> int:
    """Print `error` as `run` does (its error line, or its `--json`/`--jsonl` form) and
    give its exit status; also `session start|run`'s."""
    if jsonl:
        from mechasandbox.cli.live import result_line

        print(json.dumps(result_line(Failure(error), backend=backend)))
    elif as_json:
        print(json.dumps(result_object(None, error, backend)))
    else:
        print(f"mechasandbox: error: {error.kind}: {error.message}", file=sys.stderr)
    return exit_status(None, error)


def report(
    result: Result[RunResult, SandboxError],
    *,
    as_json: bool,
    backend: str,
    verbose: bool,
    live: bool = False,
) -> int:
    """Print a run's result as `run` does and give its exit status (also `session run`'s,
    printed by the session's supervisor). `live`: the output was printed as it came (see
    `live`); the rest is printed here."""
    finished = result.value_or(None)
    error = result.failure() if isinstance(result, Failure) else None
    if as_json:
        print(json.dumps(result_object(finished, error, backend)))
        return exit_status(finished, error)
    shown = finished or (partial_result(error) if error is not None else None)
    if shown is not None:
        if not live:
            sys.stdout.buffer.write(shown.stdout)
            sys.stdout.flush()
            sys.stderr.buffer.write(shown.stderr)
        for warning in shown.warnings:
            print(f"mechasandbox: warning: {warning}", file=sys.stderr)
        if verbose:
            for note in shown.notes:
                print(f"mechasandbox: note: {note}", file=sys.stderr)
        for violation in shown.violations:
            print(f"mechasandbox: blocked ({violation.kind}): {violation.detail}", file=sys.stderr)
        if shown.stdout_truncated or shown.stderr_truncated:
            print("mechasandbox: output truncated at --max-output", file=sys.stderr)
        if shown.signal is not None and error is None:
            print(f"mechasandbox: killed by {signal_name(shown.signal)}", file=sys.stderr)
    if error is not None:
        print(f"mechasandbox: error: {error.kind}: {error.message}", file=sys.stderr)
    return exit_status(finished, error)


def _execute(
    args: argparse.Namespace,
    app: Application,
    command: list[str],
    *,
    with_loop: bool,
    interruption: Interruption | None,
) -> int:
    as_json = bool(args.json)
    sandbox = app.services.sandbox()
    backend = sandbox.backend.name  # the one `auto` chose: it answers, whatever the outcome
    if args.verb == "policy":
        from mechasandbox.cli import policy_verb
        from mechasandbox.cli.options import options_given

        return policy_verb.main(
            app,
            command,
            as_json=as_json,
            options=options_given(args),
            fail=lambda error: fail(error, as_json=as_json, backend=backend),
        )
    from mechasandbox.cli.live import JsonLines, LiveOutput, command_input

    with contextlib.ExitStack() as files:
        if args.tty:  # its output goes to the terminal as it comes, not to a printer
            from mechasandbox.cli.terminal import terminal_for_run

            given: Result[StreamedInput | Terminal | None, ConfigInvalid] = Success(
                files.enter_context(terminal_for_run())
            )
        else:
            given = command_input(args.stdin, files)
        if isinstance(given, Failure):
            return fail(given.failure(), as_json=as_json, backend=backend, jsonl=args.jsonl)
        printer = None if as_json or args.tty else JsonLines() if args.jsonl else LiveOutput()
        stdin = given.unwrap()
        on_stdout = printer.stdout if printer is not None else None
        on_stderr = printer.stderr if printer is not None else None
        if with_loop:
            result = sandbox.run_sync(
                command, stdin=stdin, on_stdout=on_stdout, on_stderr=on_stderr
            )
        else:
            from mechasandbox.runner.blocking import complete

            result = complete(
                sandbox.run_async(command, stdin=stdin, on_stdout=on_stdout, on_stderr=on_stderr)
            )
    if interruption is not None and interruption.signal is not None:
        result = interrupted(result, interruption.signal, backend)
    if isinstance(printer, JsonLines):
        return printer.finish(result, backend=backend)
    if printer is not None:
        printer.close()
    live = printer is not None or args.tty
    return report(result, as_json=as_json, backend=backend, verbose=bool(args.verbose), live=live)


def _run_or_plan(
    args: argparse.Namespace, helper: SpawnHelperClient | None, interruption: Interruption | None
) -> int:
    as_json = bool(getattr(args, "json", False))
    command = command_of(args)
    args.tty = args.verb == "shell" or (args.verb == "run" and args.tty)
    problem = None
    if not command and args.verb == "run":  # `policy` plans a stand-in
        problem = ConfigInvalid(problem="no command given (mechasandbox run [OPTIONS] -- COMMAND)")
    elif as_json and args.jsonl:
        problem = ConfigInvalid(
            problem="--json and --jsonl exclude each other", source="command line"
        )
    elif args.tty:
        problem = _terminal_conflict(args)
    if problem is not None:
        return fail(
            problem,
            as_json=as_json,
            backend=args.backend or "auto",
            jsonl=args.jsonl and not as_json,
        )
    runs = args.verb in ("run", "shell")
    return _resolved_and_run(
        args, command, helper if runs else None, interruption if runs else None
    )


def _terminal_conflict(args: argparse.Namespace) -> ConfigInvalid | None:
    """What excludes a terminal: a terminal's output is the terminal's, its input too."""
    given = "shell" if args.verb == "shell" else "--tty"
    for option, used in (
        ("--json", args.json),
        ("--jsonl", args.jsonl),
        ("--stdin", args.stdin is not None),
    ):
        if used:
            return ConfigInvalid(problem=f"{given} and {option} exclude each other", source=option)
    return None


def _resolved_and_run(
    args: argparse.Namespace,
    command: list[str],
    helper: SpawnHelperClient | None,
    interruption: Interruption | None,
) -> int:
    """The command run (or planned) by the application every configuration layer and
    option make: the same `Application.from_config` a library user calls."""
    from dependency_injector import providers

    from mechasandbox.backends.probe_cache import ProbeCache
    from mechasandbox.cli.oneshot import go_loopless
    from mechasandbox.cli.options import policy_changes
    from mechasandbox.containers import Application

    as_json = bool(args.json)
    built = policy_changes(args).bind(
        lambda changes: Application.from_config(
            workspace=args.workspace, files=tuple(args.config), changes=changes
        )
    )
    if isinstance(built, Failure):
        return fail(
            built.failure(), as_json=as_json, backend=args.backend or "auto", jsonl=args.jsonl
        )
    app = built.unwrap()
    for warning in app.config.warnings():
        print(f"mechasandbox: warning: {warning}", file=sys.stderr)
    app.core.probe_cache.override(providers.Object(ProbeCache()))
    try:
        runs = args.verb in ("run", "shell")
        if go_loopless(app, helper, runs=runs, interruption=interruption):
            return _execute(args, app, command, with_loop=False, interruption=interruption)
        if helper is not None:
            app.core.helper.override(providers.Object(helper))
        app.core.interruption.override(providers.Object(interruption))
        return _execute(args, app, command, with_loop=True, interruption=interruption)
    finally:
        app.shutdown_resources()


def run_verb(
    raw: list[str], helper: SpawnHelperClient | None, interruption: Interruption | None = None
) -> int:
    """Parse `raw` and do what it says. `helper`: a started spawn helper for a `run`;
    `interruption`: what the CLI's SIGINT and SIGTERM handlers feed, for a `run`."""
    if raw[:1] == ["session"]:  # its verbs parse their own options
        from mechasandbox.cli import session_verb

        return session_verb.main(raw[1:])
    try:
        args = build_parser(raw[0] if raw else None).parse_args(raw)
    except UsageError as error:
        problem = ConfigInvalid(problem=str(error), source="command line")
        return fail(problem, as_json="--json" in raw, backend="auto", jsonl="--jsonl" in raw)
    try:
        if args.verb == "doctor":
            from mechasandbox.backends.base import HostContext
            from mechasandbox.cli import doctor

            return doctor.main(as_json=args.json, verify=args.verify, host=HostContext.current())
        if args.verb == "build-shim":
            from mechasandbox.cli import build_shim

            return build_shim.main()
        return _run_or_plan(args, helper, interruption)
    except BrokenPipeError:
        # The reader of our output went away (`| head`): not an error of the run.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
