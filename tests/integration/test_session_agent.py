"""The session agent and its protocol, driven by the host's client, without a sandbox
around it (what a sandbox adds: tests/backends/test_sessions*.py)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from returns.result import Failure, Success

from mechasandbox.domain.errors import BackendFailed, SpawnFailed
from mechasandbox.domain.request import StreamedInput
from mechasandbox.runner import session_protocol as protocol
from mechasandbox.runner.session_client import AgentChannel
from mechasandbox.runner.spec import RlimitSetting, SpawnSpec
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
    hello = await opened.wait_hello()
    assert hello == Success(protocol.Hello(protocol.SESSION_PROTOCOL, process.pid))
    yield opened
    opened.close()
    assert process.wait(timeout=5) == 0


def spec(*argv: str, **options: Any) -> SpawnSpec:
    return SpawnSpec(argv=argv, env=ENV, cwd="/tmp", **options)


async def test_commands_run_one_after_another_with_their_own_stdio(channel: AgentChannel) -> None:
    first = (await channel.run(spec("echo", "hi"))).unwrap()
    assert (first.exit_code, first.stdout) == (0, b"hi\n")
    second = (
        await channel.run(spec("sh", "-c", "cat; echo err >&2; exit 3", stdin=b"in"))
    ).unwrap()
    assert (second.exit_code, second.stdout, second.stderr) == (3, b"in", b"err\n")


async def test_large_input_and_output_travel_whole(channel: AgentChannel) -> None:
    data = os.urandom(300_000)
    ran = (await channel.run(spec("cat", stdin=data))).unwrap()
    assert ran.stdout == data


async def test_streamed_input(channel: AgentChannel, tmp_path: object) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"streamed")
    os.close(write_end)
    try:
        ran = (await channel.run(spec("cat", stdin=StreamedInput(read_end)))).unwrap()
    finally:
        os.close(read_end)
    assert ran.stdout == b"streamed"


async def test_a_failed_set_up_never_runs_and_the_session_goes_on(channel: AgentChannel) -> None:
    missing = await channel.run(spec("no-such-command-here"))
    assert isinstance(missing, Failure) and isinstance(missing.failure(), SpawnFailed)
    assert missing.failure().exit_status == 127
    bad_dir = await channel.run(SpawnSpec(argv=("true",), env=ENV, cwd="/nonexistent"))
    assert isinstance(bad_dir, Failure) and "chdir" in bad_dir.failure().reason
    assert (await channel.run(spec("true"))).unwrap().exit_code == 0


async def test_rlimits_are_per_command(channel: AgentChannel) -> None:
    limited = spec(
        "sh",
        "-c",
        "ulimit -n",
        rlimits=(RlimitSetting(resource="RLIMIT_NOFILE", soft=77, hard=77),),
    )
    assert (await channel.run(limited)).unwrap().stdout == b"77\n"
    assert (await channel.run(spec("sh", "-c", "ulimit -n"))).unwrap().stdout != b"77\n"


async def test_the_deadline_kills_the_whole_tree(channel: AgentChannel, tmp_path: object) -> None:
    marker = f"/tmp/mechasandbox-agent-test-{os.getpid()}"
    script = f"(sleep 0.5; touch {marker}) & setsid sh -c 'sleep 0.5; touch {marker}' & sleep 30"
    ran = (await channel.run(spec("sh", "-c", script, timeout_s=0.2))).unwrap()
    assert ran.timed_out
    await anyio.sleep(0.8)
    assert not os.path.exists(marker)


async def test_what_a_command_leaves_running_dies_with_it(channel: AgentChannel) -> None:
    marker = f"/tmp/mechasandbox-agent-left-{os.getpid()}"
    ran = await channel.run(spec("sh", "-c", f"setsid sh -c 'sleep 0.4; touch {marker}' &"))
    assert ran.unwrap().exit_code == 0
    await anyio.sleep(0.7)
    assert not os.path.exists(marker)


async def test_cancelling_the_caller_kills_the_command(channel: AgentChannel) -> None:
    with anyio.move_on_after(0.2):
        await channel.run(spec("sleep", "30"))
    assert (await channel.run(spec("echo", "next"))).unwrap().stdout == b"next\n"


async def test_the_output_cap_holds(channel: AgentChannel) -> None:
    ran = (
        await channel.run(spec("head", "-c", "100000", "/dev/zero", max_output_bytes=1000))
    ).unwrap()
    assert len(ran.stdout) == 1000 and ran.stdout_truncated


async def test_the_idle_timeout_ends_the_agent() -> None:
    agent = require_session_agent()
    host, inside = socket.socketpair()
    process = subprocess.Popen([agent, "--idle-ms", "100"], stdin=inside.fileno())
    inside.close()
    channel = AgentChannel.over_socket(host, backend="test", mode=protocol.StdioMode.FDS)
    assert isinstance(await channel.wait_hello(), Success)
    await anyio.sleep(0.3)
    ran = await channel.run(spec("true"))
    assert isinstance(ran, Failure) and isinstance(ran.failure(), BackendFailed)
    assert "idle timeout" in ran.failure().reason
    channel.close()
    assert process.wait(timeout=5) == 0


async def test_pipes_carry_frames() -> None:
    agent = require_session_agent()
    process = subprocess.Popen([agent, "--pipes"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    channel = AgentChannel.over_pipes(
        os.dup(process.stdout.fileno()), os.dup(process.stdin.fileno()), backend="test"
    )
    process.stdin.close()
    process.stdout.close()
    assert isinstance(await channel.wait_hello(), Success)
    assert (await channel.run(spec("echo", "piped", stdin=b"x"))).unwrap().stdout == b"piped\n"
    channel.close()
    assert process.wait(timeout=5) == 0
