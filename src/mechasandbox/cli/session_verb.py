"""`mechasandbox session start | run | stop | export | list`: sessions for shell-driven agents
(docs/cli.md, docs/sessions.md).

`start` starts a supervisor (`session_supervisor`) detached from the caller, which opens
the session and serves it on a private socket (`session_runtime`); it prints the session's
id (`--json`: an object). `run ID -- COMMAND` hands the supervisor this process's stdout
and stderr (and the stdin to stream) and waits for the command's exit status: the output
is written by `run`'s own code, so it is what `mechasandbox run` prints, live, `--json` or
`--jsonl`, with `run`'s exit statuses. SIGINT and SIGTERM are passed on (the command's tree
is killed: `interrupted`, 128+N); this process's death kills the command too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from typing import Any

from returns.result import Failure

from mechasandbox.cli import session_run, session_runtime
from mechasandbox.cli.parser import Parser, UsageError
from mechasandbox.domain.errors import BackendFailed, ConfigInvalid, SandboxError
from mechasandbox.runner import framing

# How long `start` waits for the session to open (a container's image may be pulled).
START_TIMEOUT_S = 300.0


def _fail(error: SandboxError, *, as_json: bool, jsonl: bool = False) -> int:
    from mechasandbox.cli.verbs import fail

    return fail(error, as_json=as_json, backend="session", jsonl=jsonl)


def _unreachable(why: str) -> BackendFailed:
    return BackendFailed(backend="session", reason=why)


def start(raw: list[str]) -> int:
    from mechasandbox.cli.session_supervisor import settings_of, start_parser

    as_json = "--json" in raw
    try:
        args = start_parser().parse_args(raw)
    except UsageError as error:
        return _fail(ConfigInvalid(problem=str(error), source="command line"), as_json=as_json)
    checked = settings_of(args)
    if isinstance(checked, Failure):
        return _fail(checked.failure(), as_json=as_json)
    try:
        directory = session_runtime.sessions_dir(create=True)
    except session_runtime.Unreachable as why:
        return _fail(ConfigInvalid(problem=str(why), source="sessions directory"), as_json=as_json)
    session_id = secrets.token_hex(8)
    with contextlib.suppress(OSError):
        session_runtime.prune_logs(directory, older_than_s=START_TIMEOUT_S)
    log_path = session_runtime.log_path(directory, session_id)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    read_end, write_end = os.pipe()
    try:
        supervisor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mechasandbox.cli.session_supervisor",
                "--id",
                session_id,
                "--ready-fd",
                str(write_end),
                *raw,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(write_end,),
            start_new_session=True,  # no terminal: the caller's Ctrl-C is not the session's
            cwd=os.getcwd(),
        )
    finally:
        os.close(write_end)
        os.close(log)
    said = _read_ready(read_end)
    if "session" not in said:
        with contextlib.suppress(subprocess.TimeoutExpired):
            supervisor.wait(timeout=5)
        if "error" in said:  # it said why: nothing more in its log
            with contextlib.suppress(OSError):
                os.unlink(log_path)
        failure = said.get("error") or {
            "kind": "backend_failed",
            "message": f"the session's supervisor ended without an answer (see {log_path})",
        }
        return _print_failure(failure, said.get("backend", "auto"), as_json=as_json)
    if as_json:
        print(json.dumps(said))
    else:
        for warning in said.get("warnings", []):
            print(f"mechasandbox: warning: {warning}", file=sys.stderr)
        print(said["session"])
    return 0


def _read_ready(fd: int) -> dict[str, Any]:
    """The supervisor's one line (the session, or its error); {} when it died first."""
    data = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    with open(fd, "rb") as ready:
        while time.monotonic() < deadline and not data.endswith(b"\n"):
            chunk = ready.read1(4096)
            if not chunk:
                break
            data += chunk
    try:
        said = json.loads(data)
    except ValueError:
        return {}
    return said if isinstance(said, dict) else {}


def _print_failure(error: dict[str, Any], backend: str, *, as_json: bool) -> int:
    kind, message = str(error.get("kind")), str(error.get("message"))
    if as_json:
        print(json.dumps({"session": None, "backend": backend, "error": error}))
    else:
        print(f"mechasandbox: error: {kind}: {message}", file=sys.stderr)
    return 125


def _ask(session_id: str, request: dict[str, Any]) -> dict[str, Any] | str:
    try:
        connected = session_runtime.connect(session_id)
    except session_runtime.Unreachable as why:
        return str(why)
    with connected as sock:
        framing.send(sock, request)
        try:
            answer = framing.receive(sock)[0]
        except (OSError, framing.FrameError):
            return f"session {session_id}'s supervisor did not answer"
    return dict(answer)


def _ask_verb(raw: list[str], verb: str) -> tuple[str, dict[str, Any], bool] | int:
    """`session VERB ID [--json]`: the supervisor asked for `verb`; (the id, its answer,
    whether --json), or the exit status of a failure already printed."""
    parser = Parser(prog=f"mechasandbox session {verb}")
    parser.add_argument("session", metavar="ID")
    parser.add_argument("--json", action="store_true")
    as_json = "--json" in raw
    try:
        args = parser.parse_args(raw)
    except UsageError as error:
        return _fail(ConfigInvalid(problem=str(error), source="command line"), as_json=as_json)
    answer = _ask(args.session, {"op": verb})
    if isinstance(answer, str):
        return _fail(_unreachable(answer), as_json=as_json)
    return args.session, answer, as_json


def stop(raw: list[str]) -> int:
    asked = _ask_verb(raw, "stop")
    if isinstance(asked, int):
        return asked
    session_id, _answer, as_json = asked
    if as_json:
        print(json.dumps({"session": session_id, "stopped": True}))
    return 0


def export(raw: list[str]) -> int:
    """The session's changes brought into the caller's workspace (`Session.export`: for a
    session on a copy of it, `ray`; nothing to bring for a local one). Prints a warning
    line per change not written back; `--json`: `{"session", "exported": true, "warnings"}`."""
    asked = _ask_verb(raw, "export")
    if isinstance(asked, int):
        return asked
    session_id, answer, as_json = asked
    if "error" in answer:
        return _print_failure(dict(answer["error"]), "session", as_json=as_json)
    warnings = [str(warning) for warning in answer.get("warnings", [])]
    if as_json:
        print(json.dumps({"session": session_id, "exported": True, "warnings": warnings}))
    else:
        for warning in warnings:
            print(f"mechasandbox: warning: {warning}", file=sys.stderr)
    return 0


def list_sessions(raw: list[str]) -> int:
    parser = Parser(prog="mechasandbox session list")
    parser.add_argument("--json", action="store_true")
    as_json = "--json" in raw
    try:
        args = parser.parse_args(raw)
    except UsageError as error:
        return _fail(ConfigInvalid(problem=str(error), source="command line"), as_json=as_json)
    try:
        names = sorted(os.listdir(session_runtime.sessions_dir(create=False)))
    except session_runtime.Unreachable:
        names = []
    sessions = []
    for name in names:
        session_id = name.removesuffix(".sock")
        if name.endswith(".sock") and session_runtime.valid_id(session_id):
            answer = _ask(session_id, {"op": "info"})
            if isinstance(answer, dict):
                sessions.append(answer)
    if args.json:
        print(json.dumps(sessions))
    else:
        for info in sessions:
            print(f"{info['session']}  {info['backend']}  {info['workspace']}")
    return 0


VERBS = {
    "start": start,
    "run": session_run.run,
    "stop": stop,
    "export": export,
    "list": list_sessions,
}


def main(raw: list[str]) -> int:
    """`session VERB ...`."""
    verb = VERBS.get(raw[0]) if raw else None
    if verb is None:
        problem = (
            "expected one of: session start|run|stop|export|list (see mechasandbox session --help)"
        )
        if raw[:1] in (["-h"], ["--help"]):
            print(
                "usage: mechasandbox session {start,run,stop,export,list} ...\n" + (__doc__ or "")
            )
            return 0
        return _fail(ConfigInvalid(problem=problem, source="command line"), as_json="--json" in raw)
    return verb(raw[1:])
