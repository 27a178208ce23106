"""The supervision both helper runners drive (no I/O: events in, decisions out)."""

from __future__ import annotations

import math
from typing import Any

from mechasandbox.runner.spec import WATCH_INTERVAL_S, SpawnSpec
from mechasandbox.runner.supervision import (
    DRAIN_GRACE_S,
    STDERR,
    STDOUT,
    Supervision,
)

EXITED = {"event": "exited", "status": 3 << 8, "cpu_s": 0.5, "max_rss_bytes": 4096}


def spec(**changes: Any) -> SpawnSpec:
    return SpawnSpec(argv=("cmd",), env=(), cwd="/", **changes)


def test_without_deadline_or_watch_only_a_message_wakes_it() -> None:
    supervision = Supervision(spec(), now=100.0)
    assert supervision.wake_at() == math.inf
    assert not supervision.tick(1e9)
    supervision.message({"event": "started", "pid": 7}, now=101.0)
    assert supervision.last is None


def test_the_deadline_asks_for_one_kill_then_waits_for_the_answer() -> None:
    supervision = Supervision(spec(timeout_s=2.0), now=100.0)
    assert supervision.wake_at() == 102.0
    assert not supervision.tick(101.9)
    assert supervision.tick(102.0)
    assert supervision.timed_out and supervision.killing
    assert supervision.wake_at() == math.inf  # the answer, however long it takes
    assert not supervision.tick(200.0)  # asked once


def test_the_watch_is_called_every_interval_and_its_reason_stops_the_run() -> None:
    reasons = iter([None, "a guard came off"])
    calls: list[float] = []

    def watch() -> str | None:
        calls.append(0)
        return next(reasons)

    supervision = Supervision(spec(timeout_s=60.0, watch=watch), now=0.0)
    assert supervision.wake_at() == WATCH_INTERVAL_S
    assert not supervision.tick(WATCH_INTERVAL_S / 2)  # not due: not called
    assert not supervision.tick(WATCH_INTERVAL_S)
    assert supervision.wake_at() == 2 * WATCH_INTERVAL_S
    assert supervision.tick(2 * WATCH_INTERVAL_S)
    assert len(calls) == 2
    assert supervision.stopped == "a guard came off"
    assert not supervision.timed_out


def test_after_the_last_word_the_output_is_waited_for_a_grace_period() -> None:
    supervision = Supervision(spec(timeout_s=1.0), now=0.0)
    supervision.output(STDOUT, b"out")
    supervision.message(EXITED, now=0.5)
    assert not supervision.tick(5.0)  # over: nothing to kill
    assert supervision.wake_at() == 0.5 + DRAIN_GRACE_S
    assert not supervision.done(1.0)
    supervision.output(STDOUT, b"")
    supervision.output(STDERR, b"")
    assert supervision.done(1.0)
    late = Supervision(spec(), now=0.0)
    late.message(EXITED, now=0.5)
    assert late.done(0.5 + DRAIN_GRACE_S)  # something still holds a pipe open


def test_the_outcome_is_built_from_the_last_word_and_the_capped_output() -> None:
    supervision = Supervision(spec(max_output_bytes=4), now=0.0)
    supervision.output(STDOUT, b"abcdef")
    supervision.output(STDERR, b"e")
    supervision.message(EXITED, now=1.0)
    outcome = supervision.outcome(duration_s=1.5).unwrap()
    assert (outcome.exit_code, outcome.signal) == (3, None)
    assert (outcome.stdout, outcome.stdout_truncated) == (b"abcd", True)
    assert (outcome.stderr, outcome.stderr_truncated) == (b"e", False)
    assert (outcome.duration_s, outcome.usage.cpu_s, outcome.usage.max_rss_bytes) == (
        1.5,
        0.5,
        4096,
    )


def test_a_run_that_never_started_is_a_spawn_failure() -> None:
    supervision = Supervision(spec(), now=0.0)
    supervision.message({"event": "failed", "errno": 2, "stage": "exec"}, now=0.0)
    assert supervision.outcome(duration_s=0.0).failure().exit_status == 127
