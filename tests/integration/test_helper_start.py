"""The spawn helper starts with the runner and is left alone when it never got a run; a
forked child does not share its parent's helper."""

from __future__ import annotations

import os
import sys
import time

import anyio
import pytest

from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.spec import SpawnSpec

TRUE = SpawnSpec(argv=("true",), env=(("PATH", "/usr/bin:/bin"),), cwd="/")


def test_the_helper_starts_with_the_runner_and_an_unused_one_is_not_waited_for() -> None:
    runner = HelperProcessRunner()
    pid = runner._helper.pid
    assert pid is not None
    started = time.monotonic()
    runner.close()
    assert time.monotonic() - started < 0.5
    for _ in range(100):  # it exits on its own once the control socket is closed
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            time.sleep(0.05)  # reaped by the background waiter
            continue
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and fork")
def test_a_forked_child_starts_its_own_helper() -> None:
    runner = HelperProcessRunner()
    try:
        parents_helper = runner._helper.pid
        assert anyio.run(runner.run, TRUE).unwrap().exit_code == 0
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                outcome = anyio.run(runner.run, TRUE).unwrap()
                mine = runner._helper.pid
                runner.close()
                code = 0 if outcome.exit_code == 0 and mine != parents_helper else 2
            finally:
                os.write(write_end, bytes([code]))
                os._exit(0)
        os.close(write_end)
        answer = os.read(read_end, 1)
        os.close(read_end)
        os.waitpid(child, 0)
        assert answer == b"\x00"
        assert anyio.run(runner.run, TRUE).unwrap().exit_code == 0  # ours still works
    finally:
        runner.close()
