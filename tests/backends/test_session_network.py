"""`--network allowlist` in a session (docs/sessions.md): one proxy for the session's life,
real sandboxes, loopback only (the upstream is the loopback server of
test_network_bridges, names resolve through its fake resolver). An allowed address is
reached, a refused one refused and reported on the command that asked only, state
persists; and the commands attack it: other addresses, the proxy's socket, the forwarder,
DNS."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from returns.result import Failure, Success

from mechasandbox.backends.base import Backend
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.linux.landlock import LandlockBackend
from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import HostProcesses, NetworkMode, NetworkPolicy, Policy
from mechasandbox.domain.result import RunResult
from mechasandbox.network.session import EgressProxy
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.sandbox import Sandbox
from mechasandbox.sandbox_session import SyncSession
from tests.backends.test_network_bridges import (
    LOOPBACK,
    PYTHON,
    TEST_NAMES,
    FakeResolver,
    _host,
    _Upstream,
    upstream,  # noqa: F401 (the fixture)
)
from tests.conftest import require_available, require_session_agent

CURL = shutil.which("curl", path="/usr/bin:/bin")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@attrs.frozen
class Net:
    session: SyncSession
    backend: Backend
    port: int
    upstream: _Upstream

    def ok(self, *argv: str) -> RunResult:
        result = self.session.run(list(argv))
        assert isinstance(result, Success), result
        finished: RunResult = result.unwrap()
        return finished

    def curl(self, url: str, *options: str) -> RunResult:
        return self.ok("curl", "-sS", "-m", "10", *options, url)


def refusals(result: RunResult) -> list[str]:
    return [v.detail for v in result.violations if v.kind == "network"]


@pytest.fixture(params=["bubblewrap", "landlock"])
def net(
    request: pytest.FixtureRequest,
    runner: HelperProcessRunner,
    tmp_path: Path,
    upstream: _Upstream,  # noqa: F811 (the fixture)
) -> Iterator[Net]:
    require_session_agent()
    resolver = FakeResolver(dict.fromkeys(TEST_NAMES, (LOOPBACK,)))
    egress = EgressProxy(resolver=resolver, interface_addresses=lambda: ())
    backend: Backend
    if request.param == "bubblewrap":
        backend = BubblewrapBackend(runner=runner, host=_host(), egress=egress)
    else:
        backend = LandlockBackend(runner=runner, host=_host(), egress=egress)
    require_available(backend)
    port = upstream.server_address[1]
    assert isinstance(port, int)
    network = NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=("api.test", f"127.0.0.1:{port}"))
    policy = Policy(
        network=network, host_processes=HostProcesses.VISIBLE, limits=Limits(timeout_s=30)
    )
    workspace = tmp_path / "ws"
    (workspace / "work").mkdir(parents=True)
    sandbox = Sandbox(backend=backend, policy=policy)
    with sandbox.session_sync(workspace=str(workspace)) as session:
        assert isinstance(session.opened, Success), session.opened
        yield Net(session, backend, port, upstream)


def test_allowed_reached_refused_reported_on_its_own_command_and_state_persists(net: Net) -> None:
    first = net.ok(
        "sh", "-c", f'curl -sS -m 10 http://api.test:{net.port}/one > "${{TMPDIR:-/tmp}}/got"'
    )
    assert first.exit_code == 0 and first.violations == (), first
    refused = net.curl(f"http://evil.test:{net.port}/")
    assert b"hello from upstream" not in refused.stdout
    assert refusals(refused) == [f"blocked GET evil.test:{net.port}: not in the allowlist"]
    tunnel = net.curl("http://evil.test:443/", "-p")
    assert tunnel.exit_code != 0
    assert refusals(tunnel) == ["blocked CONNECT evil.test:443: not in the allowlist"]
    # the refusals were the commands' own: none on the next, and the first's output is kept
    again = net.ok(
        "sh", "-c", f'cat "${{TMPDIR:-/tmp}}/got"; curl -sS -m 10 http://api.test:{net.port}/two'
    )
    assert again.violations == (), again
    assert again.stdout == b"hello from upstream: GET /one\nhello from upstream: GET /two\n"


def test_other_addresses_are_not_reached_directly(net: Net) -> None:
    before = len(net.upstream.requests)
    script = (
        "import socket\n"
        "for port in (PORT, 80, 53):\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=5)\n"
        "        print('CONNECTED', port)\n"
        "    except OSError as error:\n"
        "        print('refused', port, error.errno)\n"
    ).replace("PORT", str(net.port))
    result = net.ok(PYTHON, "-c", script)
    assert b"CONNECTED" not in result.stdout and result.stdout.count(b"refused") == 3, result
    direct = net.curl(f"http://127.0.0.1:{net.port}/", "--noproxy", "*")
    assert direct.exit_code != 0
    assert len(net.upstream.requests) == before


def test_no_dns_from_inside(net: Net) -> None:
    # Opening a UDP socket and a route lookup are all a command may try: nothing is sent.
    script = (
        "import socket\n"
        "try:\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "    s.connect(('192.0.2.1', 53))\n"
        "    print('ROUTE')\n"
        "except OSError as error:\n"
        "    print('no udp', error.errno)\n"
        "try:\n"
        "    socket.getaddrinfo('api.test', 80)\n"
        "    print('RESOLVED')\n"
        "except OSError as error:\n"
        "    print('no dns', error)\n"
    )
    result = net.ok(PYTHON, "-c", script)
    text = result.stdout.decode()
    assert "no udp" in text and "no dns" in text, result


def test_the_proxy_socket_and_the_forwarder_from_a_later_command(net: Net) -> None:
    if isinstance(net.backend, BubblewrapBackend):
        # The proxy's socket, bound in, spoken to directly: the same rules, the same report.
        script = (
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.connect('/run/mechasandbox/proxy.sock')\n"
            "s.sendall(b'GET http://evil.test:PORT/ HTTP/1.1\\r\\nHost: evil.test\\r\\n\\r\\n')\n"
            "print(s.recv(100))\n"
        ).replace("PORT", str(net.port))
        direct = net.ok(PYTHON, "-c", script)
        assert b"403" in direct.stdout, direct
        assert refusals(direct) == [f"blocked GET evil.test:{net.port}: not in the allowlist"]
        # A command that kills its forwarder and listens on its port itself: nothing of
        # it is left for the next command, whose own forwarder reaches the proxy.
        hijack = (
            "import socket, subprocess, sys, time\n"
            "print(subprocess.run(['pkill', '-x', 'socat']).returncode)\n"
            "time.sleep(0.2)\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('127.0.0.1', 3128)); s.listen()\n"
            "print('listening', flush=True)\n"
            "time.sleep(30)\n"
        )
        left = net.ok("sh", "-c", f'{PYTHON} -c "{hijack}" & sleep 1')
        assert left.stdout == b"0\nlistening\n", left
    else:
        # The token is the session's: a later command has it too (its own proxy variable),
        # but a request without it is refused.
        script = (
            "import os, socket, urllib.parse\n"
            "u = urllib.parse.urlsplit(os.environ['http_proxy'])\n"
            "s = socket.create_connection((u.hostname, u.port), timeout=5)\n"
            "s.sendall(b'GET http://api.test:PORT/ HTTP/1.1\\r\\nHost: api.test\\r\\n\\r\\n')\n"
            "print(s.recv(100))\n"
        ).replace("PORT", str(net.port))
        untold = net.ok(PYTHON, "-c", script)
        assert b"407" in untold.stdout, untold
    reached = net.curl(f"http://api.test:{net.port}/after")
    assert b"hello from upstream: GET /after" in reached.stdout, reached
    assert reached.violations == ()


def test_a_command_that_cannot_run_is_spawn_failed(net: Net) -> None:
    missing = net.session.run(["no-such-command-here"])
    assert isinstance(missing, Failure) and isinstance(missing.failure(), SpawnFailed), missing
    assert missing.failure().exit_status == 127
    assert net.curl(f"http://api.test:{net.port}/").exit_code == 0
