"""`--network allowlist` in docker and podman sessions (backends/oci/session.py): one proxy
for the session's life, its socket mounted into the `--network none` container, each command
behind its own forwarder; real engines, a real proxy, loopback only (the upstream is the
loopback server of test_network_bridges, names resolve through its fake resolver). An
allowed name is reached, a refused one refused and reported on the command that asked only,
state persists; a command that kills its forwarder or takes its port spoils nothing for the
next. (No gVisor: no session runs under it, test_oci_sessions.py.) The test image is
busybox with socat: no curl or python: busybox wget honours http_proxy (its `-T` makes this
busybox crash: not used), socat speaks to an address directly."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from returns.result import Failure, Success

from mechasandbox.backends.oci import (
    DockerBackend,
    PodmanBackend,
    PooledBackend,
    PoolSettings,
)
from mechasandbox.backends.oci.engine import OciBackend
from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import (
    Enforcement,
    HostProcesses,
    NetworkMode,
    NetworkPolicy,
    Policy,
)
from mechasandbox.domain.result import RunResult
from mechasandbox.network.session import EgressProxy
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.sandbox import Sandbox
from mechasandbox.sandbox_session import SyncSession
from tests.backends.oci_contract import TEST_IMAGE
from tests.backends.test_network_bridges import (
    LOOPBACK,
    TEST_NAMES,
    FakeResolver,
    _host,
    _Upstream,
    upstream,  # noqa: F401 (the fixture)
)
from tests.conftest import require_available, require_session_agent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux engines")


@attrs.frozen
class Net:
    session: SyncSession
    port: int
    upstream: _Upstream

    def ok(self, *argv: str) -> RunResult:
        result = self.session.run(list(argv))
        assert isinstance(result, Success), result
        finished: RunResult = result.unwrap()
        return finished

    def wget(self, url: str, *options: str) -> RunResult:
        return self.ok("wget", "-q", "-O-", *options, url)


def refusals(result: RunResult) -> list[str]:
    return [v.detail for v in result.violations if v.kind == "network"]


def out(result: RunResult) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


@pytest.fixture
def proxies() -> Iterator[Path]:
    """Where the sessions' proxies make their private directories (short: a unix socket's
    path has ~108 bytes), empty once every session is closed."""
    parent = Path(tempfile.mkdtemp(prefix="msb-t-"))
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


def egress(parent: Path) -> EgressProxy:
    resolver = FakeResolver(dict.fromkeys(TEST_NAMES, (LOOPBACK,)))
    return EgressProxy(resolver=resolver, interface_addresses=lambda: (), run_parent=str(parent))


def allowlist(port: int, enforcement: Enforcement = Enforcement.STRICT) -> Policy:
    network = NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=("api.test", f"127.0.0.1:{port}"))
    return Policy(
        network=network,
        enforcement=enforcement,
        host_processes=HostProcesses.VISIBLE,
        limits=Limits(timeout_s=30),
    )


def bridged(name: str, runner: HelperProcessRunner, parent: Path) -> OciBackend:
    """A docker or podman backend whose image has the forwarder."""
    require_session_agent()
    engine = DockerBackend if name == "docker" else PodmanBackend
    backend: OciBackend = engine(
        runner=runner, host=_host(), image=TEST_IMAGE, egress=egress(parent)
    )
    require_available(backend)
    caps = backend.probe().unwrap()
    if Protection.NETWORK_ALLOWLIST not in caps.enforced:
        pytest.skip(f"{name}: {dict(caps.details)[Protection.NETWORK_ALLOWLIST]}")
    return backend


def port_of(server: _Upstream) -> int:
    port = server.server_address[1]
    assert isinstance(port, int)
    return port


@pytest.fixture(params=["docker", "podman"])
def net(
    request: pytest.FixtureRequest,
    runner: HelperProcessRunner,
    tmp_path: Path,
    proxies: Path,
    upstream: _Upstream,  # noqa: F811 (the fixture)
) -> Iterator[Net]:
    backend = bridged(request.param, runner, proxies)
    port = port_of(upstream)
    sandbox = Sandbox(backend=backend, policy=allowlist(port))
    with sandbox.session_sync(workspace=str(tmp_path)) as session:
        assert isinstance(session.opened, Success), session.opened
        assert os.listdir(proxies) != []  # the session's proxy, for its life
        yield Net(session, port, upstream)
    assert os.listdir(proxies) == []  # closed with the session


def test_allowed_reached_refused_reported_on_its_own_command_and_state_persists(net: Net) -> None:
    first = net.ok("sh", "-c", f"wget -q -O- http://api.test:{net.port}/one > /tmp/got")
    assert first.exit_code == 0 and first.violations == (), out(first)
    refused = net.wget(f"http://evil.test:{net.port}/")
    assert refused.exit_code != 0 and b"hello from upstream" not in refused.stdout
    assert refusals(refused) == [f"blocked GET evil.test:{net.port}: not in the allowlist"]
    # the refusal was that command's own: none on the next, and the first's output is kept
    again = net.ok("sh", "-c", f"cat /tmp/got; wget -q -O- http://api.test:{net.port}/two")
    assert again.violations == (), again
    assert again.stdout == b"hello from upstream: GET /one\nhello from upstream: GET /two\n"


def test_the_proxy_environment_and_a_read_only_socket_in_every_command(net: Net) -> None:
    for _ in range(2):
        result = net.ok(
            "sh",
            "-c",
            "echo $http_proxy; [ -S /run/mechasandbox/proxy.sock ] && echo socket; "
            "rm -f /run/mechasandbox/proxy.sock 2>/dev/null || echo kept",
        )
        assert result.stdout.decode().split() == ["http://127.0.0.1:3128", "socket", "kept"]


def test_other_addresses_are_not_reached_directly(net: Net) -> None:
    before = len(net.upstream.requests)
    raw = net.ok("socat", "-T", "5", "-", f"TCP:127.0.0.1:{net.port}")
    assert raw.exit_code != 0, out(raw)
    assert net.ok("cat", "/proc/net/route").stdout.decode().splitlines()[1:] == []
    assert len(net.upstream.requests) == before


def test_the_proxy_socket_spoken_to_directly_has_the_same_rules(net: Net) -> None:
    ask = (
        f"printf 'GET http://evil.test:{net.port}/ HTTP/1.1\\r\\nHost: evil.test\\r\\n\\r\\n' "
        "| socat -t 5 - UNIX-CONNECT:/run/mechasandbox/proxy.sock"
    )
    direct = net.ok("sh", "-c", ask)
    assert b" 403 " in direct.stdout.split(b"\r\n")[0], out(direct)
    assert refusals(direct) == [f"blocked GET evil.test:{net.port}: not in the allowlist"]
    assert net.wget(f"http://api.test:{net.port}/next").violations == ()


def test_a_command_that_kills_its_forwarder_and_takes_its_port_spoils_nothing(net: Net) -> None:
    # Its forwarder killed, its port taken by a listener of its own, left running: the
    # command's tree kill ends it, and the next command's own forwarder reaches the proxy.
    listener = "grep -q '0100007F:0C38 00000000:0000 0A' /proc/net/tcp"
    hijack = (
        "killall socat; echo killed $?; "
        f"i=0; while {listener} && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
        "(socat TCP-LISTEN:3128,bind=127.0.0.1,reuseaddr,fork SYSTEM:'echo hijacked' "
        "</dev/null >/dev/null 2>&1 &); "
        f"i=0; until {listener} || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done; "
        f"{listener} && echo listening; "
        f"wget -q -O- http://api.test:{net.port}/hijacked"
    )
    taken = net.ok("sh", "-c", hijack)
    assert taken.stdout.startswith(b"killed 0\nlistening\n"), out(taken)
    assert b"hello from upstream" not in taken.stdout
    reached = net.wget(f"http://api.test:{net.port}/after")
    assert reached.stdout == b"hello from upstream: GET /after\n", out(reached)
    assert reached.violations == ()
    assert b"hijacked" not in net.ok("sh", "-c", "ps -o args").stdout


def test_a_command_not_found_behind_the_bridge_is_spawn_failed(net: Net) -> None:
    missing = net.session.run(["no-such-command-here"])
    assert isinstance(missing, Failure), missing
    error = missing.failure()
    assert isinstance(error, SpawnFailed) and error.exit_status == 127, error
    assert error.command == "no-such-command-here"
    assert net.ok("sh", "-c", "exit 125").exit_code == 125  # the command's own status
    assert net.wget(f"http://api.test:{net.port}/").exit_code == 0


def test_warm_sessions_are_bridged_too(
    runner: HelperProcessRunner,
    tmp_path: Path,
    proxies: Path,
    upstream: _Upstream,  # noqa: F811 (the fixture)
) -> None:
    docker = bridged("docker", runner, proxies)
    port = port_of(upstream)
    pooled = PooledBackend(backend=docker, settings=PoolSettings(size=1))
    try:
        with Sandbox(backend=pooled, policy=allowlist(port)).session_sync(
            workspace=str(tmp_path)
        ) as session:
            assert isinstance(session.opened, Success), session.opened
            net = Net(session, port, upstream)
            reached = net.wget(f"http://api.test:{port}/pooled")
            assert b"hello from upstream: GET /pooled" in reached.stdout, out(reached)
            refused = net.wget(f"http://evil.test:{port}/")
            assert refusals(refused) == [f"blocked GET evil.test:{port}: not in the allowlist"]
    finally:
        pooled.close()
    assert os.listdir(proxies) == []  # the ready session opened after it, closed too
