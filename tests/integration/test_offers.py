"""The direct hand-off: the spawn helper offers each warm child to the host, the host sends
the run straight to it and then the run's socket to the helper in a `claim`. These tests
drive the real helper through that protocol by hand, to reach the orders of events a
runner only meets by chance: a run over before its claim is read, a child gone before its
run came."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mechasandbox.runner import framing, native
from mechasandbox.runner.blocking import BlockingHelperRunner
from mechasandbox.runner.client import SpawnHelperClient
from mechasandbox.runner.spec import SpawnSpec
from mechasandbox.runner.submission import spawn_request
from tests.conftest import require_exec_shim
from tests.integration.offering import offers

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

ENV = (("PATH", "/usr/bin:/bin"),)


@pytest.fixture(params=["shim", "forked"])
def client(request: pytest.FixtureRequest) -> Iterator[SpawnHelperClient]:
    """A client whose helper offers exec shim children, then one that offers forked ones."""
    if request.param == "shim":
        require_exec_shim()
    client = SpawnHelperClient(exec_shim=request.param == "shim")
    BlockingHelperRunner(client).run_blocking(
        SpawnSpec(argv=("true",), env=ENV, cwd="/", timeout_s=10)
    )  # through the helper: it then prepares a warm child like it, and offers it
    yield client
    client.close()


def _take_offer(client: SpawnHelperClient) -> tuple[int, socket.socket, bool]:
    """The first warm child the helper offers (its pid, the socket that hands it a run, and
    whether it is the exec shim), taken out of the client's hands so that no other run gets
    it."""
    (offer,) = offers(client, take=True)
    return offer.pid, offer.runs, offer.native


def _gone(pid: int) -> None:
    """Wait until the helper has reaped `pid` (its /proc entry is gone)."""
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"{pid} was not reaped"
        time.sleep(0.01)


def _claim(client: SpawnHelperClient, pid: int) -> socket.socket:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with client._lock:
        assert client._control is not None
        framing.send(client._control, {"op": "claim", "pid": pid}, [theirs.fileno()])
    theirs.close()
    return ours


def _last_word(sock: socket.socket) -> dict[str, Any]:
    sock.settimeout(10)
    while True:
        message, _ = framing.receive(sock)
        if message.get("event") in ("exited", "failed"):
            return message


def test_a_run_over_before_its_claim_is_read_is_still_answered(
    client: SpawnHelperClient,
) -> None:
    """The host hands the run to the warm child and is slow to send the claim: the helper
    reaps the child first, and must keep its status for the claim (not answer "not
    started", nor lose the run)."""
    pid, runs, shim = _take_offer(client)
    spec = SpawnSpec(argv=("sh", "-c", "echo handed; exit 3"), env=ENV, cwd="/", timeout_s=10)
    out_r, out_w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        if shim:
            frame = native.encode(spawn_request(spec))
            assert frame is not None
            framing.send_frame(runs, frame, [devnull, out_w, out_w])
        else:
            framing.send(runs, spawn_request(spec), [devnull, out_w, out_w])
    finally:
        runs.close()
        os.close(devnull)
        os.close(out_w)
    _gone(pid)  # the command ran and ended, and the helper reaped it: no claim yet
    with os.fdopen(out_r, "rb") as output:
        assert output.read() == b"handed\n"

    with _claim(client, pid) as sock:
        last = _last_word(sock)
    assert last["event"] == "exited"
    assert os.WIFEXITED(last["status"]) and os.WEXITSTATUS(last["status"]) == 3


def test_a_claim_for_a_child_that_died_waiting_is_answered_as_not_started(
    client: SpawnHelperClient,
) -> None:
    """A warm child killed before its run came (its cgroup removed): the run the host meant
    for it is reported as not started, never as a command that ran."""
    pid, runs, _ = _take_offer(client)
    os.kill(pid, signal.SIGKILL)
    _gone(pid)
    runs.close()

    with _claim(client, pid) as sock:
        last = _last_word(sock)
    assert last["event"] == "failed"
    assert last["stage"] == "setup"


def test_a_warm_child_the_host_lets_go_exits_and_is_reaped(client: SpawnHelperClient) -> None:
    """Closing the offer's socket is how the host lets a warm child go (an older one, one it
    has no use for): it must end, not linger as the helper's child."""
    pid, runs, _ = _take_offer(client)
    assert os.path.exists(f"/proc/{pid}")
    runs.close()
    _gone(pid)


def test_offers_the_host_does_not_read_wait_in_order_with_their_descriptors() -> None:
    """The helper never blocks on the control socket (the host reads it only when it
    submits, and may be waiting for a run's answer): frames that do not fit wait in the
    outbox and go out whole, in order, each with its descriptor, as the host drains."""
    from mechasandbox.runner.helper import Helper

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    helper = Helper(ours)
    count = 40
    for index in range(count):
        read_end, write_end = os.pipe()
        os.write(write_end, str(index).encode())
        os.close(write_end)
        frame = framing.encode({"event": "offer", "n": index, "pad": "x" * 10000})
        helper._post(frame, [read_end])  # the helper closes it once sent
    assert helper.outbox, "the socket never filled: the test would prove nothing"

    def drain_outbox() -> None:  # what the helper's loop does when the socket is writable
        deadline = time.monotonic() + 10
        while helper.outbox and time.monotonic() < deadline:
            helper._flush()
            time.sleep(0.001)

    flusher = threading.Thread(target=drain_outbox)
    flusher.start()
    received: list[int] = []
    theirs.settimeout(10)
    while len(received) < count:
        message, fds = framing.receive(theirs)
        assert len(fds) == 1, message
        with os.fdopen(fds[0], "rb") as attached:
            assert attached.read() == str(message["n"]).encode()  # its own descriptor
        received.append(message["n"])
    flusher.join()
    assert received == list(range(count))
    assert not helper.outbox
    ours.close()
    theirs.close()


def test_a_host_forked_after_an_offer_leaves_it_to_its_parent(client: SpawnHelperClient) -> None:
    """A process forked from the host (a worker) starts a helper of its own: it must not
    hand its runs to the warm children its parent was offered (their answers go to the
    parent's helper), and the parent's next run still gets one."""
    runner = BlockingHelperRunner(client)
    deadline = time.monotonic() + 10
    while True:
        with client._lock:
            assert client._control is not None
            client._collect_offers(client._control)
            offered = [offer.pid for group in client._offers.values() for offer in group]
        if offered:
            break
        assert time.monotonic() < deadline, "no warm child was offered"
        time.sleep(0.01)

    child = os.fork()
    if child == 0:
        status = 1
        try:
            spec = SpawnSpec(argv=("true",), env=ENV, cwd="/", timeout_s=10)
            codes = [
                runner.run_blocking(spec).map(lambda done: done.exit_code).value_or(-1)
                for _ in range(2)  # the second, once it has a helper of its own
            ]
            status = 0 if codes == [0, 0] else 1
            runner.close()
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked host's run failed"
    assert all(os.path.exists(f"/proc/{pid}") for pid in offered), "the parent's was used"

    runner.run_blocking(SpawnSpec(argv=("true",), env=ENV, cwd="/", timeout_s=10)).unwrap()
    assert not all(os.path.exists(f"/proc/{pid}") for pid in offered), "not handed over"
