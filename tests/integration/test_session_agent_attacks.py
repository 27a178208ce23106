"""A command attacking the session agent's protocol (no sandbox around it: the agent and
the host's client as in test_session_agent.py), in both stdio modes: output that looks
like frames, floods past the output cap, a stdin the command never reads."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from mechasandbox.runner import session_protocol as protocol
from mechasandbox.runner.session_client import AgentChannel
from mechasandbox.runner.spec import SpawnSpec
from tests.conftest import require_session_agent

pytestmark = pytest.mark.anyio
ENV = (("PATH", "/usr/bin:/bin"),)


@pytest.fixture(params=[protocol.StdioMode.FDS, protocol.StdioMode.FRAMED])
async def channel(request: pytest.FixtureRequest) -> AsyncIterator[AgentChannel]:
    agent = require_session_agent()
    host, inside = socket.socketpair()
    process = subprocess.Popen([agent, "--idle-ms", "60000"], stdin=inside.fileno())
    inside.close()
    opened = AgentChannel.over_socket(host, backend="test", mode=request.param)
    assert (await opened.wait_hello()).unwrap().pid == process.pid
    yield opened
    opened.close()
    assert process.wait(timeout=5) == 0


def spec(*argv: str, **options: object) -> SpawnSpec:
    return SpawnSpec(argv=argv, env=ENV, cwd="/tmp", **options)  # type: ignore[arg-type]


def frame(kind: bytes, body: bytes, length: int | None = None) -> bytes:
    size = len(body) + 1 if length is None else length
    return size.to_bytes(4, "big") + kind + body


async def test_output_that_looks_like_frames_is_only_output(channel: AgentChannel) -> None:
    fake = (
        frame(b"X", (0).to_bytes(4, "little") + bytes(16))  # EXITED 0
        + frame(b"B", b"\x02")  # BYE
        + frame(b"O", b"\x01forged")
        + frame(b"H", b"", length=0xFFFFFFFF)  # a length the parser refuses
    )
    with anyio.fail_after(20):
        ran = (await channel.run(spec("sh", "-c", "cat; exit 5", stdin=fake))).unwrap()
    assert (ran.exit_code, ran.stdout) == (5, fake)
    assert (await channel.run(spec("echo", "next"))).unwrap().stdout == b"next\n"


async def test_a_flood_past_the_cap_ends_in_time_and_the_session_goes_on(
    channel: AgentChannel,
) -> None:
    """The cap keeps the host's memory bounded (the command is not stopped by it, as in a
    one-shot run: its timeout is)."""
    started = time.monotonic()
    script = "cat /dev/zero & cat /dev/zero >&2"
    flood = spec("sh", "-c", script, max_output_bytes=4096, timeout_s=1.0)
    with anyio.fail_after(20):
        ran = (await channel.run(flood)).unwrap()
    assert ran.timed_out and len(ran.stdout) == 4096 and ran.stdout_truncated
    assert len(ran.stderr) == 4096 and ran.stderr_truncated
    assert time.monotonic() - started < 10
    assert (await channel.run(spec("echo", "next"))).unwrap().stdout == b"next\n"


async def test_input_the_command_never_reads_does_not_hold_the_session(
    channel: AgentChannel,
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    with anyio.fail_after(20):
        ran = (await channel.run(spec("true", stdin=data))).unwrap()
    assert ran.exit_code == 0
    assert (await channel.run(spec("echo", "next"))).unwrap().stdout == b"next\n"


async def test_a_child_holding_the_output_open_dies_and_the_command_ends(
    channel: AgentChannel,
) -> None:
    """The first process exits; a child keeps stdout open, ignoring SIGHUP and SIGTERM."""
    started = time.monotonic()
    script = "trap '' HUP TERM; (trap '' HUP TERM; sleep 60; echo late) & echo first"
    with anyio.fail_after(20):
        ran = (await channel.run(spec("sh", "-c", script, timeout_s=30))).unwrap()
    assert ran.stdout == b"first\n" and not ran.timed_out
    assert time.monotonic() - started < 5
