"""Seatbelt denials from the unified log: the pure parser on sample `log stream` output,
and the stream watcher against a stand-in `log` command (any POSIX OS)."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import anyio

from mechasandbox.backends.macos.violations import (
    MAX_VIOLATIONS,
    kind_of,
    parse_denials,
    predicate,
    watch_denials,
)
from tests.backends.test_seatbelt_golden import GOLDEN, check_golden

TAG = "mechasandbox-5f0c2a9e4b7d1c38"


def test_sample_log_stream_matches_golden() -> None:
    lines = (GOLDEN / "seatbelt_log_stream.synthetic.ndjson").read_text().splitlines()
    violations = parse_denials(lines, TAG)
    rendered = "".join(f"{v.kind}: {v.detail}\n" for v in violations)
    check_golden("seatbelt_violations.txt", rendered)
    # other runs' tags, untagged denials, allows and non-denials are not this run's
    assert "other-run" not in rendered
    assert "no-tag" not in rendered
    assert "allow" not in rendered
    assert "unrelated" not in rendered
    # the same denial twice is reported once
    assert rendered.count("cat (pid 7866)") == 1
    # the system's chatter is left out (the fixture has some, tagged as the run's)
    assert "diagnosticd" not in rendered
    assert "analyticsd" not in rendered


def test_kinds() -> None:
    assert kind_of("file-read-data") == "filesystem"
    assert kind_of("file-write-unlink") == "filesystem"
    assert kind_of("network-outbound") == "network"
    assert kind_of("system-socket") == "network"
    assert kind_of("mach-lookup") == "ipc"
    assert kind_of("process-info-pidinfo") == "process"
    assert kind_of("signal") == "process"
    assert kind_of("sysctl-read") == "sysctl"
    assert kind_of("iokit-open") == "iokit"
    assert kind_of("nvram-get") == "other"


def test_violations_are_capped() -> None:
    lines = [
        json.dumps({"eventMessage": f"Sandbox: cat(1) deny(1) file-read-data /f{i}\n{TAG}"})
        for i in range(MAX_VIOLATIONS + 50)
    ]
    assert len(parse_denials(lines, TAG)) == MAX_VIOLATIONS


def test_predicate_names_the_tag() -> None:
    assert predicate(TAG) == f'eventMessage ENDSWITH "{TAG}"'


def fake_log(tmp_path: Path, body: str) -> str:
    script = tmp_path / "log"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_watch_collects_what_the_stream_prints(tmp_path: Path) -> None:
    line = json.dumps({"eventMessage": f"Sandbox: cat(5) deny(1) file-read-data /secret\n{TAG}"})
    command = fake_log(
        tmp_path,
        f'[ "$1 $2 $3 $4" = "stream --style ndjson --predicate" ] || exit 3\n'
        f"echo 'Filtering the log data using ...'\n"
        f"sleep 0.2\nprintf '%s\\n' '{line}'\nexec sleep 60\n",
    )

    async def main() -> tuple[float, list[str], str | None]:
        started = time.monotonic()
        async with watch_denials(TAG, command=command, ready_s=2.0, drain_s=0.5) as log:
            await anyio.sleep(0.3)
        return time.monotonic() - started, log.lines, log.problem

    elapsed, lines, problem = anyio.run(main)
    assert problem is None
    assert [v.detail for v in parse_denials(lines, TAG)] == [
        "cat (pid 5) was denied file-read-data: /secret"
    ]
    assert elapsed < 2.0  # the drain is bounded; `log` itself is killed


def test_watch_reports_a_stream_that_cannot_run(tmp_path: Path) -> None:
    refused = fake_log(tmp_path, "echo 'log: Must be admin to run stream' >&2\nexit 64\n")

    async def main(command: str) -> str | None:
        async with watch_denials(TAG, command=command, ready_s=0.5, drain_s=0.1) as log:
            pass
        return log.problem

    problem = anyio.run(main, refused) or ""
    assert "exited with status" in problem
    assert "Must be admin to run stream" in problem  # its stderr, kept for the note
    missing = os.path.join(tmp_path, "absent-log")
    assert "did not start" in (anyio.run(main, missing) or "")


def test_denials_are_attached_or_their_absence_explained() -> None:
    from mechasandbox.backends.macos.seatbelt import _with_denials
    from mechasandbox.backends.macos.violations import DenialLog
    from mechasandbox.domain import RunResult

    finished = RunResult(backend="seatbelt", exit_code=1, signal=None)
    line = json.dumps({"eventMessage": f"Sandbox: cat(5) deny(1) file-read-data /s\n{TAG}"})
    seen = _with_denials(finished, DenialLog(TAG, lines=[line]))
    assert [v.kind for v in seen.violations] == ["filesystem"]
    refused = _with_denials(finished, DenialLog(TAG, problem="`log stream` exited with 64"))
    assert refused.violations == ()
    assert refused.notes == ("violations not reported: `log stream` exited with 64",)
    assert refused.warnings == ()
