"""Sessions on the `ray` backend, on the real two-node cluster (`ray_cluster`): the state a
session keeps on its node, the explicit export through the safe reader, pinning, a node
lost mid-session, and what closing leaves (nothing). The test that kills the worker comes
last and starts it again."""

from __future__ import annotations

import os
import pathlib
import stat
import threading
import time

import attrs
import pytest
from returns.result import Failure

from mechasandbox.domain.errors import NodeLost
from mechasandbox.domain.events import OutputEvent
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.testing.ray_cluster import WORKER_ADDRESS, NetnsCluster

pytestmark = pytest.mark.ray

POLICY = Policy()


def test_a_session_keeps_its_state_on_its_node_until_exported(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """The session's /tmp and its copy of the workspace persist between commands, all on
    one node; nothing reaches the caller's workspace before `export`, which brings what
    changed since the last export (removals too) and nothing older."""
    (tmp_path / "old.txt").write_text("old\n")
    (tmp_path / "gone.txt").write_text("x")
    with ray_cluster.session(str(tmp_path), POLICY) as opened:
        session = opened.unwrap()
        seen: list[OutputEvent] = []
        script = "echo kept > /tmp/kept; cat old.txt > copy.txt; rm gone.txt; echo one"
        first = session.run(["sh", "-c", script], on_output=seen.append).unwrap()
        assert first.stdout == b"one\n"
        assert b"".join(e.data for e in seen) == b"one\n"  # streamed as it came
        second = session.run(["sh", "-c", "cat /tmp/kept copy.txt; ls"]).unwrap()
        assert second.stdout == b"kept\nold\ncopy.txt\nold.txt\n"
        assert not (tmp_path / "copy.txt").exists()
        assert (tmp_path / "gone.txt").exists()

        assert session.export().unwrap() == ()
        assert (tmp_path / "copy.txt").read_text() == "old\n"
        assert not (tmp_path / "gone.txt").exists()

        (tmp_path / "copy.txt").write_text("the caller's\n")
        session.run(["sh", "-c", "echo two > two.txt"]).unwrap()
        session.export().unwrap()
        assert (tmp_path / "two.txt").read_text() == "two\n"
        assert (tmp_path / "copy.txt").read_text() == "the caller's\n"  # unchanged there

        nodes = {first.node, second.node}
        nodes |= {session.run(["true"]).unwrap().node for _ in range(4)}
        assert nodes == {session.facts()["node"]}
        # A command's own limits, and a timeout that does not end the session.
        timed = session.run(["sleep", "5"], limits=attrs.evolve(POLICY.limits, timeout_s=0.5))
        assert isinstance(timed, Failure) and timed.failure().kind == "timeout", timed
        assert session.run(["cat", "/tmp/kept"]).unwrap().stdout == b"kept\n"


def _processes_naming(text: str) -> list[int]:
    """The processes whose command line holds `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            line = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in line:
            found.append(int(entry))
    return found


def _until(check: object, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_pinned_session_exports_through_the_safe_reader_and_closes_clean(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """Pinned to the worker, every command runs there; an export carries no link out, no
    set-user-ID bit, no write to a protected path, and disarms a repository the session
    made; closing leaves no actor, no sandbox process and no directory on the node."""
    worker = ray_cluster.node_id(WORKER_ADDRESS)
    script = (
        "ln -s /etc/shadow shadow; ln -s ../../../../../../etc escape; ln -s inside.txt ok;"
        " echo x > inside.txt; cp /bin/true suid; chmod 4755 suid;"
        " mkdir -p .git/hooks; echo evil > .git/hooks/post-checkout 2>/dev/null;"
        " mkdir -p sub/.git/hooks sub/.git/objects sub/.git/refs;"
        " echo 'ref: refs/heads/main' > sub/.git/HEAD;"
        " printf '#!/bin/sh\\necho pwned\\n' > sub/.git/hooks/post-checkout;"
        " chmod +x sub/.git/hooks/post-checkout; true"
    )
    with ray_cluster.session(str(tmp_path), POLICY, pinned_to=worker) as opened:
        session = opened.unwrap()
        directory = session.facts()["directory"]
        assert session.run(["sh", "-c", script]).unwrap().node == worker
        assert session.run(["sleep", "0"]).unwrap().node == worker
        assert os.path.isdir(directory)
        assert _processes_naming(directory), "the session's sandbox must run (else: vacuous)"
        assert _processes_naming("SessionActor"), "the actor must be seen (else: vacuous)"
        warnings = session.export().unwrap()
        assert not os.path.lexists(tmp_path / "shadow")
        assert not os.path.lexists(tmp_path / "escape")
        assert os.readlink(tmp_path / "ok") == "inside.txt"
        assert not (tmp_path / "suid").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
        assert not (tmp_path / ".git" / "hooks" / "post-checkout").exists()
        assert not (tmp_path / "sub" / ".git").exists()  # disarmed
        assert any("shadow" in w and "link out" in w for w in warnings), warnings
        assert any("sub" in w for w in warnings), warnings
    assert _until(lambda: not os.path.exists(directory), 10)
    assert _until(lambda: not _processes_naming(directory), 10)
    assert _until(lambda: not _processes_naming("SessionActor"), 10)


# --- a node lost: last, it starts the worker node again ------------------------------------
def test_a_node_lost_mid_session_ends_it_for_every_later_command(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    worker = ray_cluster.node_id(WORKER_ADDRESS)
    started = threading.Event()

    def seen(event: OutputEvent) -> None:
        if b"started" in event.data:
            started.set()

    def kill_when_started() -> None:
        if started.wait(30):
            ray_cluster.kill_worker()

    policy = attrs.evolve(POLICY, limits=Limits(timeout_s=60))
    killer = threading.Thread(target=kill_when_started)
    try:
        with ray_cluster.session(str(tmp_path), policy, pinned_to=worker) as opened:
            session = opened.unwrap()
            session.run(["sh", "-c", "echo before > made"]).unwrap()
            killer.start()
            began = time.monotonic()
            result = session.run(["sh", "-c", "echo started; sleep 50"], on_output=seen)
            killer.join()
            assert time.monotonic() - began < 45, "lost, not waited for until the timeout"
            assert isinstance(result, Failure), result
            error = result.failure()
            assert isinstance(error, NodeLost), error
            assert (error.node, error.partial.stdout) == (worker, b"started\n")
            for later in (session.run(["true"]), session.export()):
                assert isinstance(later, Failure), later
                assert isinstance(later.failure(), NodeLost), later
            assert session.facts()["ended"] is not None
            assert not (tmp_path / "made").exists()  # never exported
    finally:
        if killer.is_alive() or started.is_set():
            killer.join()
        ray_cluster.restart_worker()
