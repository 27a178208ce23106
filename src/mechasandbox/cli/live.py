"""`run`'s stdio: the command's input (`--stdin`), and its output printed as it comes, as
it is (`LiveOutput`) or one JSON event a line (`JsonLines`, `--jsonl`).

No event loop here: the one-shot path prints live too (see `oneshot`).
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import queue
import sys
import threading
from typing import Any, BinaryIO

from returns.result import Failure, Result, Success

from mechasandbox.cli.output import exit_status, result_object
from mechasandbox.cli.stdin_choice import UnreadableInput, input_fd
from mechasandbox.domain.errors import ConfigInvalid, SandboxError
from mechasandbox.domain.events import ResultEvent, ViolationEvent, WarningEvent, closing_events
from mechasandbox.domain.request import StreamedInput
from mechasandbox.domain.result import RunResult


def command_input(
    choice: str | None, files: contextlib.ExitStack
) -> Result[StreamedInput | None, ConfigInvalid]:
    """What `--stdin` gives the command (see `stdin_choice.input_fd`): None (/dev/null), or
    a descriptor streamed to it."""
    try:
        fd = input_fd(choice, files)
    except UnreadableInput as error:
        return Failure(ConfigInvalid(problem=str(error), source="--stdin"))
    return Success(None if fd is None else StreamedInput(fd))


class _Writer:
    """Writes to this process's stdout and stderr from a thread of its own, in the order
    given: a reader that does not keep up holds the writes, never the run, whose deadline
    and kill keep their time (what waits is bounded by the output cap). A reader that went
    away (`| head`) stops the run at its next chunk, as SIGPIPE stops a pipeline's command."""

    def __init__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._queue: queue.SimpleQueue[tuple[BinaryIO, bytes] | None] = queue.SimpleQueue()
        self._broken: OSError | None = None
        self._thread = threading.Thread(target=self._write_all, name="output", daemon=True)
        self._thread.start()

    def put(self, stream: BinaryIO, data: bytes) -> None:
        if self._broken is not None:
            raise self._broken
        self._queue.put((stream, data))

    def close(self) -> None:
        """Wait until everything is written; raise what stopped the writing, if anything."""
        self._queue.put(None)
        self._thread.join()
        if self._broken is not None:
            raise self._broken

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._broken is None:
                stream, data = item
                try:
                    stream.write(data)
                    stream.flush()
                except OSError as error:
                    self._broken = error


class LiveOutput:
    """The command's stdout and stderr printed as they come, as they are; the rest of the
    run (warnings, violations, errors) is `verbs.report`'s, after `close`."""

    def __init__(self) -> None:
        self._writer = _Writer()

    def stdout(self, data: bytes) -> None:
        self._writer.put(sys.stdout.buffer, data)

    def stderr(self, data: bytes) -> None:
        self._writer.put(sys.stderr.buffer, data)

    def close(self) -> None:
        self._writer.close()


class JsonLines:
    """The run as JSON lines on stdout as it goes (docs/cli.md): `{"event": "stdout"|
    "stderr", "data": TEXT}` per chunk (UTF-8, a character split between chunks kept whole,
    undecodable bytes replaced; `data_b64`: the chunk's exact bytes, where `data` is not
    them), then `{"event": "warning", "message": ...}` and `{"event": "violation", "kind":
    ..., "detail": ..., "count": ...}`, and last the `--json` object with `"event":
    "result"` (whose stdout and stderr hold the whole output again)."""

    def __init__(self) -> None:
        self._writer = _Writer()
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")
        }

    def stdout(self, data: bytes) -> None:
        self._chunk("stdout", data)

    def stderr(self, data: bytes) -> None:
        self._chunk("stderr", data)

    def _chunk(self, name: str, data: bytes, *, final: bool = False) -> None:
        """One chunk's event; its exact bytes too (`data_b64`) where its text is not them:
        bytes that are no UTF-8, or a character split at its end or start. A reader gets
        the exact output by joining `data_b64` where there is one, else `data` encoded."""
        text = self._decoders[name].decode(data, final=final)
        event: dict[str, Any] = {"event": name, "data": text}
        if text.encode() != data:
            event["data_b64"] = base64.b64encode(data).decode("ascii")
        if text or data:
            self._line(event)

    def _line(self, event: dict[str, Any]) -> None:
        self._writer.put(sys.stdout.buffer, (json.dumps(event) + "\n").encode())

    def finish(self, result: Result[RunResult, SandboxError], *, backend: str) -> int:
        """Print the events that end the run (see `domain.events`); its exit status."""
        for name in self._decoders:
            self._chunk(name, b"", final=True)
        for event in closing_events(result):
            if isinstance(event, WarningEvent):
                self._line({"event": "warning", "message": event.message})
            elif isinstance(event, ViolationEvent):
                violation = event.violation
                self._line(
                    {
                        "event": "violation",
                        "kind": violation.kind,
                        "detail": violation.detail,
                        "count": violation.count,
                    }
                )
            elif isinstance(event, ResultEvent):
                self._line(result_line(event.value, backend=backend))
        self._writer.close()
        finished = result.value_or(None)
        return exit_status(finished, result.failure() if isinstance(result, Failure) else None)


def result_line(result: Result[RunResult, SandboxError], *, backend: str) -> dict[str, Any]:
    """The last line of `--jsonl`: the `--json` object, with `"event": "result"` first."""
    finished = result.value_or(None)
    error = result.failure() if isinstance(result, Failure) else None
    return {"event": "result", **result_object(finished, error, backend)}
