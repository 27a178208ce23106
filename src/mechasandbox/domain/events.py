"""A run as a stream of events ending in its result.

While a command runs, its output comes as `OutputEvent`s, chunk by chunk as the command
writes it (what the output cap keeps: the chunks of a stream add up to the result's
`stdout` or `stderr`). Once it is over, what the run found out comes as `WarningEvent`s and
`ViolationEvent`s, and the typed result last, as a `ResultEvent`. `Sandbox.run` collects
the events (its callbacks see the output ones), `Sandbox.stream` yields them, the CLI
prints them as they come.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

import attrs
from returns.result import Failure, Result

from mechasandbox.domain.errors import SandboxError, partial_result
from mechasandbox.domain.result import RunResult, Violation

StreamName: TypeAlias = Literal["stdout", "stderr"]


@attrs.frozen
class OutputEvent:
    """`data` the command wrote to `stream`, as it came (never empty)."""

    stream: StreamName
    data: bytes


@attrs.frozen
class WarningEvent:
    """A protection the run did not have (one of the result's `warnings`)."""

    message: str


@attrs.frozen
class ViolationEvent:
    """Something the sandbox stopped during the run (one of the result's `violations`)."""

    violation: Violation


@attrs.frozen
class ResultEvent:
    """The last event: the run's typed result, as `Sandbox.run` gives it."""

    value: Result[RunResult, SandboxError]


RunEvent: TypeAlias = OutputEvent | WarningEvent | ViolationEvent | ResultEvent
# Where the output of a run goes as it comes (called in the runner, once per chunk kept).
OutputSink: TypeAlias = Callable[[OutputEvent], None]


def shown(value: Result[RunResult, SandboxError]) -> RunResult | None:
    """The run a result shows: the completed one, or what a limit's error captured before
    it stopped the run (None for the other errors)."""
    return partial_result(value.failure()) if isinstance(value, Failure) else value.unwrap()


def closing_events(value: Result[RunResult, SandboxError]) -> tuple[RunEvent, ...]:
    """The events that end a run: its warnings and violations (those of the output captured
    before a limit stopped it, for a limit's error), then its result."""
    found: list[RunEvent] = []
    run = shown(value)
    if run is not None:
        found += [WarningEvent(message) for message in run.warnings]
        found += [ViolationEvent(violation) for violation in run.violations]
    return (*found, ResultEvent(value))
