"""The process that holds one CLI session (`mechasandbox session start`; docs/sessions.md).

`session start` starts it detached (its own session, no terminal, stdio on a log file) with
the options of the start; it opens the session as a library user would
(`Application.from_config`, `Sandbox.session`), listens on its socket in the private
sessions directory (`session_runtime`), says on its ready descriptor whether it opened
(one JSON line), and serves until `stop`, the session's idle timeout or maximum lifetime,
or SIGTERM. Its death ends the sandbox whatever killed it: the agent's channel and the
spawn helper's control socket are its own descriptors (the agent ends, bwrap dies with its
parent, the helper kills what is left).

A connection (only from this uid: SO_PEERCRED) sends one request frame (`runner.framing`):
`info`; `stop`; or `run`, with the caller's stdout and stderr (and the stdin to stream, if
any) attached. The command's output, its warnings and its result are written to those
descriptors by the same code as `mechasandbox run`'s (`verbs.report`, `live`), so that
`session run` prints exactly what `run` prints; the answer is `{"op": "done", "status":
N}`, `run`'s exit status. During a run the caller may send `interrupt` (its SIGINT or
SIGTERM: the command's tree is killed, the answer is `interrupted`, 128+N); a caller that
goes away (its connection closes) has its command killed the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.session_base import SessionSettings
from mechasandbox.cli import session_runtime
from mechasandbox.cli.options import add_run_options, policy_changes
from mechasandbox.cli.parser import Parser, UsageError
from mechasandbox.domain.errors import ConfigInvalid, SandboxError
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.request import StreamedInput
from mechasandbox.domain.result import RunResult
from mechasandbox.runner import framing
from mechasandbox.sandbox_session import Session

# How long a connected caller may take to send its whole request frame.
REQUEST_TIMEOUT_S = 5.0
# How often the supervisor looks at the session's bounds and its end.
WATCH_S = 0.5


def start_parser() -> Parser:
    """`session start`'s options: `run`'s policy options, and the session's bounds."""
    parser = Parser(prog="mechasandbox session start")
    add_run_options(parser, command=False)
    parser.add_argument(
        "--idle-timeout",
        default="15m",
        metavar="DURATION",
        help="end the session after this long without a command (default 15m)",
    )
    parser.add_argument(
        "--max-lifetime",
        default="8h",
        metavar="DURATION",
        help="end the session this long after its start (default 8h)",
    )
    return parser


def settings_of(args: argparse.Namespace) -> Result[SessionSettings, ConfigInvalid]:
    from mechasandbox.config.validation import duration

    values: dict[str, float] = {}
    for option, text, field in (
        ("--idle-timeout", args.idle_timeout, "idle_timeout_s"),
        ("--max-lifetime", args.max_lifetime, "max_lifetime_s"),
    ):
        read = duration(text)
        if isinstance(read, Failure):
            return Failure(ConfigInvalid(problem=read.failure(), source=option))
        values[field] = read.unwrap()
    try:
        return Success(SessionSettings(**values))
    except (TypeError, ValueError) as error:
        return Failure(ConfigInvalid(problem=str(error), source="session start"))


@contextlib.contextmanager
def _printing_to(out_fd: int, err_fd: int) -> Iterator[None]:
    """This process's stdout and stderr are the caller's for the block (one run at a time)."""
    out = open(out_fd, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    err = open(err_fd, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        for stream in (out, err):
            with contextlib.suppress(OSError):
                stream.close()


@attrs.define
class _Caller:
    """What the caller of a run did meanwhile: its interruption, or going away."""

    signal: int | None = None
    gone: bool = False


@attrs.define(eq=False)
class Supervisor:
    session: Session
    info: dict[str, Any]
    limits: Limits
    settings: SessionSettings
    started: float = attrs.field(factory=time.monotonic)
    idle_since: float = attrs.field(factory=time.monotonic)
    running: bool = False
    _lock: anyio.Lock = attrs.field(factory=anyio.Lock)

    async def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._watch_bounds, tasks.cancel_scope)
            tasks.start_soon(self._watch_signals, tasks.cancel_scope)
            while True:
                await anyio.wait_readable(listener)
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                if session_runtime.peer_uid(conn) != os.geteuid():
                    conn.close()  # another user: not even an answer
                    continue
                tasks.start_soon(self._connection, conn, tasks.cancel_scope)

    async def _watch_bounds(self, scope: anyio.CancelScope) -> None:
        """The idle timeout and the lifetime, as the agent enforces them inside; and the
        session's own end (fail closed, its sandbox gone), noticed within a second: a
        supervisor whose session is over has nothing to serve."""
        idle, lifetime = self.settings.idle_timeout_s, self.settings.max_lifetime_s
        while True:
            if self.session.opened.map(lambda s: s.ended).value_or("not open") is not None:
                scope.cancel()
                return
            now = time.monotonic()
            wake = [self.started + lifetime] if lifetime is not None else []
            if idle is not None and not self.running:
                wake.append(self.idle_since + idle)
            if wake and now >= min(wake):
                scope.cancel()
                return
            await anyio.sleep(min(WATCH_S, max(0.01, min(wake) - now)) if wake else WATCH_S)

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as got:
            async for _ in got:
                scope.cancel()
                return

    async def _connection(self, conn: socket.socket, scope: anyio.CancelScope) -> None:
        fds: list[int] = []
        with conn:
            try:
                message, fds = await _receive(conn)
                kind = message.get("op")
                if kind == "info":
                    framing.send(conn, self.info)
                elif kind == "stop":
                    await self.session.aclose()
                    framing.send(conn, {"op": "stopped"})
                    scope.cancel()
                elif kind == "export":
                    async with self._lock:  # never beside a command
                        exported = await self.session.export()
                    framing.send(conn, _exported(exported))
                elif kind == "run":
                    async with self._lock:
                        self.running = True
                        try:
                            status = await self._run(conn, message, fds)
                        finally:
                            self.running = False
                            self.idle_since = time.monotonic()
                    framing.send(conn, {"op": "done", "status": status})
            except (OSError, framing.FrameError, ValueError, TimeoutError):
                pass  # the caller went away, or spoke nonsense: nothing to answer
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    async def _run(self, conn: socket.socket, message: dict[str, Any], fds: list[int]) -> int:
        from mechasandbox.cli.live import JsonLines, LiveOutput
        from mechasandbox.cli.output import interrupted
        from mechasandbox.cli.verbs import fail, report

        as_json, jsonl = bool(message.get("json")), bool(message.get("jsonl"))
        streamed = bool(message.get("stdin"))
        if len(fds) != 2 + streamed:
            raise ValueError("a run's descriptors: [stdin,] stdout, stderr")
        backend = str(self.info["backend"])
        argv, limits = message.get("argv"), message.get("limits", [])
        with _printing_to(fds[-2], fds[-1]):
            try:
                command_limits = attrs.evolve(self.limits, **dict(limits))
            except (TypeError, ValueError) as error:
                problem = ConfigInvalid(problem=str(error), source="session run")
                return fail(problem, as_json=as_json, backend=backend, jsonl=jsonl)
            printer = None if as_json else JsonLines() if jsonl else LiveOutput()
            kept = {1: bytearray(), 2: bytearray()}

            def sink(stream: int) -> Any:
                show = (printer.stdout if stream == 1 else printer.stderr) if printer else None

                def take(data: bytes) -> None:
                    kept[stream] += data
                    if show is not None:
                        show(data)

                return take

            caller = _Caller()
            result: Result[RunResult, SandboxError] | None = None
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_watch_caller, conn, caller, tasks.cancel_scope)
                result = await self.session.run_async(
                    argv if isinstance(argv, list) else [],
                    stdin=StreamedInput(fds[0]) if streamed else None,
                    limits=command_limits,
                    on_stdout=sink(1),
                    on_stderr=sink(2),
                )
                tasks.cancel_scope.cancel()
            if caller.gone:
                return 125  # nobody to tell
            if caller.signal is not None or result is None:
                partial = RunResult(
                    backend=backend,
                    exit_code=None,
                    signal=None,
                    stdout=bytes(kept[1]),
                    stderr=bytes(kept[2]),
                )
                chosen = result if result is not None else Success(partial)
                result = interrupted(chosen, caller.signal or signal.SIGTERM, backend)
            try:
                if isinstance(printer, JsonLines):
                    return printer.finish(result, backend=backend)
                if printer is not None:
                    printer.close()
                verbose = bool(message.get("verbose"))
                return report(
                    result,
                    as_json=as_json,
                    backend=backend,
                    verbose=verbose,
                    live=printer is not None,
                )
            except BrokenPipeError:
                return 141


async def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One request frame (bounded: a caller that sends half a frame is dropped)."""
    with anyio.fail_after(REQUEST_TIMEOUT_S):
        await anyio.wait_readable(conn)
    conn.settimeout(REQUEST_TIMEOUT_S)
    return framing.receive(conn)


async def _watch_caller(conn: socket.socket, caller: _Caller, scope: anyio.CancelScope) -> None:
    """The caller's interruption, or its going away: either stops the command (the run is
    cancelled; the agent kills its tree before the cancellation goes on)."""
    while True:
        await anyio.wait_readable(conn)
        try:
            message, fds = framing.receive(conn)
        except (OSError, framing.FrameError, ValueError):
            caller.gone = True
            scope.cancel()
            return
        for fd in fds:
            os.close(fd)
        number = message.get("signal")
        if message.get("op") == "interrupt" and isinstance(number, int):
            caller.signal = number
            scope.cancel()
            return


def _ready(fd: int, said: dict[str, Any]) -> None:
    with contextlib.suppress(OSError), open(fd, "w", closefd=True) as ready:
        ready.write(json.dumps(said) + "\n")


def _failed(fd: int, error: SandboxError, backend: str) -> int:
    _ready(fd, {"error": {"kind": error.kind, "message": error.message}, "backend": backend})
    return 125


async def _open_and_serve(
    args: argparse.Namespace, session_id: str, ready_fd: int, settings: SessionSettings
) -> int:
    from dependency_injector import providers

    from mechasandbox.backends.probe_cache import ProbeCache
    from mechasandbox.containers import Application

    configured = args.backend or "auto"
    built = policy_changes(args).bind(
        lambda changes: Application.from_config(
            workspace=args.workspace, files=tuple(args.config), changes=changes
        )
    )
    if isinstance(built, Failure):
        return _failed(ready_fd, built.failure(), configured)
    app = built.unwrap()
    app.core.probe_cache.override(providers.Object(ProbeCache()))
    warnings = list(app.config.warnings())
    try:
        directory = session_runtime.sessions_dir(create=True)
    except session_runtime.Unreachable as unreachable:
        problem = ConfigInvalid(problem=str(unreachable), source="sessions directory")
        return _failed(ready_fd, problem, configured)
    path = session_runtime.socket_path(directory, session_id)
    if len(os.fsencode(path)) >= session_runtime.MAX_SOCKET_PATH:
        why = f"{path} is too long for a unix socket: set XDG_RUNTIME_DIR to a shorter path"
        return _failed(
            ready_fd, ConfigInvalid(problem=why, source="sessions directory"), configured
        )
    try:
        sandbox = app.services.sandbox()
        async with sandbox.session(settings=settings) as session:
            if isinstance(session.opened, Failure):
                return _failed(ready_fd, session.opened.failure(), configured)
            opened = session.opened.unwrap()
            info = {
                "session": session_id,
                "backend": opened.name,
                "workspace": opened.workspace,
                "pid": os.getpid(),
                "idle_timeout_s": settings.idle_timeout_s,
                "max_lifetime_s": settings.max_lifetime_s,
                "warnings": warnings + list(opened.warnings),
            }
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            previous = os.umask(0o177)  # the socket: 0600 from its birth
            try:
                listener.bind(path)
            finally:
                os.umask(previous)
            try:
                listener.listen(16)
                _ready(ready_fd, info)
                supervisor = Supervisor(
                    session=session,
                    info=info,
                    limits=app.services.policy().limits,
                    settings=settings,
                )
                await supervisor.serve(listener)
            finally:
                listener.close()
                with contextlib.suppress(OSError):
                    os.unlink(path)
    finally:
        app.shutdown_resources()
    return 0


def main(argv: list[str]) -> int:
    """`python -m mechasandbox.cli.session_supervisor --id ID --ready-fd FD [START OPTIONS]`."""
    head = argparse.ArgumentParser(add_help=False)
    head.add_argument("--id", required=True)
    head.add_argument("--ready-fd", type=int, required=True)
    known, rest = head.parse_known_args(argv)
    if not session_runtime.valid_id(known.id):
        return 2
    try:
        args = start_parser().parse_args(rest)
    except UsageError as error:
        return _failed(
            known.ready_fd, ConfigInvalid(problem=str(error), source="command line"), "auto"
        )
    settings = settings_of(args)
    if isinstance(settings, Failure):
        return _failed(known.ready_fd, settings.failure(), args.backend or "auto")
    status: int = anyio.run(_open_and_serve, args, known.id, known.ready_fd, settings.unwrap())
    if status == 0:  # ended as it should: its log goes (a crash's stays, see session_runtime)
        with contextlib.suppress(OSError, session_runtime.Unreachable):
            directory = session_runtime.sessions_dir(create=False)
            os.unlink(session_runtime.log_path(directory, known.id))
    return status


def _exported(exported: Result[tuple[str, ...], SandboxError]) -> dict[str, Any]:
    """An `export`'s answer: its warnings (what was not written back), or its error."""
    if isinstance(exported, Failure):
        error = exported.failure()
        return {"op": "exported", "error": {"kind": error.kind, "message": error.message}}
    return {"op": "exported", "warnings": list(exported.unwrap())}


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
    sys.exit(130)
