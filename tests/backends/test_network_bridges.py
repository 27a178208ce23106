"""`--network allowlist` end to end: a real proxy, real sandboxes, loopback only.

Every upstream is a server this module starts on 127.0.0.1; names resolve through a fake
resolver that maps test names to it. The sandboxes reach the proxy through their bridge
(bubblewrap: a unix socket bound in and socat on the sandbox's own loopback; landlock: the
proxy's loopback port with the run's token; docker/podman: the socket mounted into a
`--network none` container and the image's socat on its loopback). Nothing here sends a
packet anywhere else: the DNS checks on landlock only try to open sockets, never to send.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import shutil
import socketserver
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import attrs
import pytest
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import Backend, HostContext
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.linux.landlock import LandlockBackend
from mechasandbox.backends.oci import DockerBackend, PodmanBackend, PooledBackend, PoolSettings
from mechasandbox.cli.main import main
from mechasandbox.containers import Application
from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.errors import ConfigInvalid, SandboxError, Timeout
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import (
    Enforcement,
    HostProcesses,
    NetworkMode,
    NetworkPolicy,
    Policy,
)
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.network.patterns import IPAddress
from mechasandbox.network.session import EgressProxy
from mechasandbox.runner.runner import HelperProcessRunner
from tests.backends.oci_contract import TEST_IMAGE
from tests.conftest import require_available

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
PYTHON = "/usr/bin/python3"
CURL = shutil.which("curl", path="/usr/bin:/bin")

pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")


# --- loopback upstream and fake resolver ------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def answer(self) -> None:
        server = self.server
        assert isinstance(server, _Upstream)
        server.requests.append(f"{self.command} {self.path}")
        body = f"hello from upstream: {self.command} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.answer()

    def do_CONNECT(self) -> None:  # a relay answering a second CONNECT itself
        self.answer()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Upstream(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    requests: list[str]


@pytest.fixture(scope="module")
def upstream() -> Iterator[_Upstream]:
    server = _Upstream(("127.0.0.1", 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@attrs.define
class FakeResolver:
    table: dict[str, tuple[IPAddress, ...]]
    lookups: list[str] = attrs.Factory(list)

    async def resolve(self, host: str) -> Sequence[IPAddress]:
        self.lookups.append(host)
        if host not in self.table:
            raise OSError(f"unknown test name {host}")
        return self.table[host]


TEST_NAMES = ("api.test", "relay.test", "a.github.test", "evilgithub.test")


# --- the sandboxes ----------------------------------------------------------------------------
@attrs.frozen
class Net:
    backend: Backend
    resolver: FakeResolver
    workspace: Path
    port: int
    upstream: _Upstream

    def policy(self, *allow: str, deny: tuple[str, ...] = ()) -> Policy:
        return Policy(
            network=NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=allow, deny=deny),
            host_processes=HostProcesses.VISIBLE,
            limits=Limits(timeout_s=30),
        )

    def run(self, policy: Policy, *argv: str) -> Result[RunResult, SandboxError]:
        request = RunRequest(argv=argv, workspace=str(self.workspace))
        return anyio.run(self.backend.run, request, policy)

    def ok(self, policy: Policy, *argv: str) -> RunResult:
        result = self.run(policy, *argv)
        assert isinstance(result, Success), result
        finished: RunResult = result.unwrap()
        return finished

    @property
    def allowed(self) -> Policy:
        """api.test and the loopback upstream's own ip:port (names resolve to loopback)."""
        return self.policy("api.test", f"127.0.0.1:{self.port}")

    def proxy_script(self, body: str) -> str:
        """Python that finds the proxy from http_proxy (host, port, credentials)."""
        return (
            "import base64, os, socket, urllib.parse\n"
            "u = urllib.parse.urlsplit(os.environ['http_proxy'])\n"
            "auth = ''\n"
            "if u.password:\n"
            "    token = base64.b64encode(f'{u.username}:{u.password}'.encode()).decode()\n"
            "    auth = f'Proxy-Authorization: Basic {token}\\r\\n'\n" + body
        )


def _host() -> HostContext:
    env = (("LANG", "C.UTF-8"), ("PATH", "/usr/local/bin:/usr/bin:/bin"), ("HOME", "/root"))
    return attrs.evolve(HostContext.current(), env=env)


@pytest.fixture(params=["bubblewrap", "landlock"])
def net(
    request: pytest.FixtureRequest,
    runner: HelperProcessRunner,
    tmp_path: Path,
    upstream: _Upstream,
) -> Net:
    resolver = FakeResolver(dict.fromkeys(TEST_NAMES, (LOOPBACK,)))
    egress = EgressProxy(resolver=resolver, interface_addresses=lambda: ())
    host = _host()
    backend: Backend
    if request.param == "bubblewrap":
        backend = BubblewrapBackend(runner=runner, host=host, egress=egress)
    else:
        backend = LandlockBackend(runner=runner, host=host, egress=egress)
    require_available(backend)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    port = upstream.server_address[1]
    assert isinstance(port, int)
    return Net(backend, resolver, workspace, port, upstream)


def details(result: RunResult) -> list[str]:
    return [v.detail for v in result.violations if v.kind == "network"]


def out(result: RunResult) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


# --- allowed traffic --------------------------------------------------------------------------
def test_allowed_name_over_plain_http(net: Net) -> None:
    result = net.ok(net.allowed, "curl", "-sS", "-m", "10", f"http://api.test:{net.port}/plain")
    assert result.exit_code == 0, out(result)
    assert b"hello from upstream: GET /plain" in result.stdout
    assert result.violations == ()
    assert "api.test" in net.resolver.lookups


def test_allowed_name_over_connect(net: Net) -> None:
    url = f"http://api.test:{net.port}/tunnelled"
    result = net.ok(net.allowed, "curl", "-sS", "-m", "10", "--proxytunnel", url)
    assert result.exit_code == 0, out(result)
    assert b"hello from upstream: GET /tunnelled" in result.stdout
    assert result.violations == ()


def test_python_urllib_honours_the_proxy_variables(net: Net) -> None:
    script = (
        "import urllib.request\n"
        f"print(urllib.request.urlopen('http://api.test:{net.port}/py', timeout=10).read())"
    )
    result = net.ok(net.allowed, PYTHON, "-c", script)
    assert result.exit_code == 0, out(result)
    assert b"hello from upstream: GET /py" in result.stdout


# --- refused traffic --------------------------------------------------------------------------
def test_unlisted_domain_is_blocked_with_a_violation(net: Net) -> None:
    result = net.ok(net.allowed, "curl", "-sS", "-m", "10", f"http://evil.test:{net.port}/")
    assert b"403" in result.stdout or b"not in the allowlist" in result.stdout, out(result)
    assert details(result) == [f"blocked GET evil.test:{net.port}: not in the allowlist"]
    tunnelled = net.ok(net.allowed, "curl", "-sS", "-m", "10", "-p", "http://evil.test:443/")
    assert tunnelled.exit_code != 0
    assert details(tunnelled) == ["blocked CONNECT evil.test:443: not in the allowlist"]
    assert "evil.test" not in net.resolver.lookups


def test_look_alike_is_blocked(net: Net) -> None:
    policy = net.policy("*.github.test", f"127.0.0.1:{net.port}")
    allowed = net.ok(policy, "curl", "-sS", "-m", "10", f"http://a.github.test:{net.port}/")
    assert b"hello from upstream" in allowed.stdout, out(allowed)
    result = net.ok(policy, "curl", "-sS", "-m", "10", f"http://evilgithub.test:{net.port}/")
    assert b"hello from upstream" not in result.stdout
    assert details(result) == [f"blocked GET evilgithub.test:{net.port}: not in the allowlist"]


def test_ip_literal_is_blocked_unless_listed(net: Net) -> None:
    url = f"http://127.0.0.1:{net.port}/literal"
    refused = net.ok(net.policy("api.test"), "curl", "-sS", "-m", "10", url)
    assert b"hello from upstream" not in refused.stdout
    assert len(details(refused)) == 1 and "127.0.0.1" in details(refused)[0]
    listed = net.ok(net.policy(f"127.0.0.1:{net.port}"), "curl", "-sS", "-m", "10", url)
    assert b"hello from upstream: GET /literal" in listed.stdout, out(listed)
    assert listed.violations == ()


def test_allowed_name_resolving_to_loopback_is_blocked(net: Net) -> None:
    result = net.ok(
        net.policy("api.test"), "curl", "-sS", "-m", "10", f"http://api.test:{net.port}/"
    )
    assert b"hello from upstream" not in result.stdout
    assert details(result) == [
        f"blocked GET api.test:{net.port}: it resolves to 127.0.0.1, a loopback address "
        f"(list 127.0.0.1:{net.port} to allow it)"
    ]


def test_direct_connection_bypassing_the_proxy_fails(net: Net) -> None:
    before = len(net.upstream.requests)
    script = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {net.port}), timeout=5)\n"
        "    print('CONNECTED')\n"
        "except OSError as error:\n"
        "    print('refused', error.errno)\n"
    )
    result = net.ok(net.allowed, PYTHON, "-c", script)
    assert b"refused" in result.stdout, out(result)
    assert b"CONNECTED" not in result.stdout
    direct = net.ok(
        net.allowed, "curl", "-sS", "-m", "5", "--noproxy", "*", f"http://127.0.0.1:{net.port}/"
    )
    assert direct.exit_code != 0
    assert len(net.upstream.requests) == before


def test_client_ignoring_the_proxy_fails_closed(net: Net) -> None:
    before = len(net.upstream.requests)
    script = (
        "import urllib.request\n"
        "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
        "try:\n"
        f"    opener.open('http://api.test:{net.port}/', timeout=5)\n"
        "    print('REACHED')\n"
        "except OSError as error:\n"
        "    print('failed', error)\n"
    )
    result = net.ok(net.allowed, PYTHON, "-c", script)
    assert b"failed" in result.stdout, out(result)
    assert b"REACHED" not in result.stdout
    assert len(net.upstream.requests) == before


def test_no_dns_from_inside(net: Net) -> None:
    # Opening a UDP socket is all the sandbox may try: nothing is ever sent.
    script = (
        "import socket\n"
        "try:\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "except OSError as error:\n"
        "    print('udp socket refused', error.errno)\n"
        "else:\n"
        "    try:\n"
        "        s.connect(('192.0.2.1', 53))\n"  # a route lookup only: UDP connect sends nothing
        "        print('ROUTE')\n"
        "    except OSError as error:\n"
        "        print('no route', error.errno)\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 53), timeout=5)\n"
        "    print('TCP53')\n"
        "except OSError as error:\n"
        "    print('tcp 53 refused', error.errno)\n"
    )
    result = net.ok(net.allowed, PYTHON, "-c", script)
    text = result.stdout.decode()
    assert "ROUTE" not in text and "TCP53" not in text, text
    assert "udp socket refused" in text or "no route" in text
    if isinstance(net.backend, BubblewrapBackend):
        # Its own network namespace: no routes at all, so no resolver can be reached.
        routes = net.ok(net.allowed, "cat", "/proc/net/route").stdout.decode().splitlines()
        assert routes[1:] == []
        lookup = net.ok(
            net.allowed,
            PYTHON,
            "-c",
            "import socket\ntry:\n    socket.getaddrinfo('api.test', 80)\n    print('RESOLVED')\n"
            "except OSError as error:\n    print('no dns', error)\n",
        )
        assert b"no dns" in lookup.stdout, out(lookup)


def test_connect_relayed_through_an_allowed_hop_reaches_only_that_hop(net: Net) -> None:
    """A second CONNECT inside an allowed tunnel is bytes for the allowed upstream: the
    proxy neither resolves nor connects to the inner target."""
    policy = net.policy("relay.test", f"127.0.0.1:{net.port}")
    body = (
        "s = socket.create_connection((u.hostname, u.port), timeout=10)\n"
        f"s.sendall(f'CONNECT relay.test:{net.port} HTTP/1.1\\r\\n{{auth}}\\r\\n'.encode())\n"
        "head = s.recv(4096)\n"
        "print(head.split(b'\\r\\n')[0].decode())\n"
        "s.sendall(b'CONNECT evil.test:443 HTTP/1.1\\r\\nHost: evil.test:443\\r\\n\\r\\n')\n"
        "data = b''\n"
        "while chunk := s.recv(4096):\n"
        "    data += chunk\n"
        "print(data.decode())\n"
    )
    result = net.ok(policy, PYTHON, "-c", net.proxy_script(body))
    assert "200" in result.stdout.decode().splitlines()[0], out(result)
    assert b"hello from upstream: CONNECT evil.test:443" in result.stdout
    assert "evil.test" not in net.resolver.lookups
    assert result.violations == ()
    # ...while the same CONNECT straight to the proxy is refused and recorded.
    direct = net.ok(policy, "curl", "-sS", "-m", "10", "-p", "http://evil.test:443/")
    assert details(direct) == ["blocked CONNECT evil.test:443: not in the allowlist"]


def test_violations_survive_a_timeout(net: Net) -> None:
    policy = attrs.evolve(net.allowed, limits=Limits(timeout_s=3))
    result = net.run(policy, "sh", "-c", "curl -sS -m 5 http://evil.test/ ; exec sleep 30")
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, Timeout)
    assert [v.detail for v in error.partial.violations] == [
        "blocked GET evil.test:80: not in the allowlist"
    ]


def test_too_wide_pattern_is_a_config_error(net: Net) -> None:
    result = net.run(net.policy("*"), "true")
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), ConfigInvalid)
    assert "'*'" in result.failure().message or "*" in result.failure().message


# --- composition root and CLI -----------------------------------------------------------------
def test_resolver_is_injected_through_the_container(
    runner: HelperProcessRunner, tmp_path: Path, upstream: _Upstream
) -> None:
    probe = BubblewrapBackend(runner=runner)
    require_available(probe)
    port = upstream.server_address[1]
    app = Application()
    app.config.from_dict({"backend": "bubblewrap", "image": None, "runtime": None})
    app.core.resolver.override(FakeResolver({"api.test": (LOOPBACK,)}))
    app.core.egress.override(
        EgressProxy(resolver=FakeResolver({"api.test": (LOOPBACK,)}), interface_addresses=list)
    )
    try:
        sandbox = app.services.sandbox()
        policy = Policy(
            network=NetworkPolicy(
                mode=NetworkMode.ALLOWLIST, allow=("api.test", f"127.0.0.1:{port}")
            ),
            limits=Limits(timeout_s=30),
        )
        result = sandbox.run_sync(
            ["curl", "-sS", "-m", "10", f"http://api.test:{port}/di"],
            workspace=str(tmp_path),
            policy=policy,
        )
    finally:
        app.shutdown_resources()
    assert isinstance(result, Success), result
    assert b"hello from upstream: GET /di" in result.unwrap().stdout


def test_cli_reports_the_violation_in_json(
    runner: HelperProcessRunner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_available(BubblewrapBackend(runner=runner))
    # evil.test is refused on its name, before any resolution: no resolver is consulted.
    status = main(
        [
            "run",
            "--json",
            "--backend",
            "bubblewrap",
            "--workspace",
            str(tmp_path),
            "--network",
            "allowlist",
            "--allow-domain",
            "api.test",
            "--",
            "curl",
            "-sS",
            "-m",
            "10",
            "http://evil.test/",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert report["violations"] == [
        {
            "kind": "network",
            "detail": "blocked GET evil.test:80: not in the allowlist",
            "count": None,
        }
    ]
    assert report["error"] is None
    assert status == report["exit_code"]


def test_cli_rejects_a_too_wide_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            *("run", "--json", "--backend", "process", "--network", "allowlist"),
            *("--allow-domain", "*", "--", "true"),
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert status == 125
    assert report["error"]["kind"] == "config_invalid"
    assert "*" in report["error"]["message"]


# --- docker / podman: the socket mounted into a --network none container -----------------------
# The test image (busybox + the host's socat, see mechasandbox/images/busybox-rootfs.sh): no curl
# or python: busybox wget honours http_proxy, and `wget -Y off` ignores it.
@pytest.fixture(params=["docker", "podman"])
def box(
    request: pytest.FixtureRequest,
    runner: HelperProcessRunner,
    tmp_path: Path,
    upstream: _Upstream,
) -> Net:
    resolver = FakeResolver(dict.fromkeys(TEST_NAMES, (LOOPBACK,)))
    egress = EgressProxy(resolver=resolver, interface_addresses=lambda: ())
    engine = DockerBackend if request.param == "docker" else PodmanBackend
    backend = engine(runner=runner, host=_host(), image=TEST_IMAGE, egress=egress)
    require_available(backend)
    caps = backend.probe().unwrap()
    if Protection.NETWORK_ALLOWLIST not in caps.enforced:
        pytest.skip(f"{request.param}: {dict(caps.details)[Protection.NETWORK_ALLOWLIST]}")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    port = upstream.server_address[1]
    assert isinstance(port, int)
    return Net(backend, resolver, workspace, port, upstream)


def test_container_allowed_name_over_plain_http(box: Net) -> None:
    result = box.ok(box.allowed, "wget", "-q", "-O-", f"http://api.test:{box.port}/plain")
    assert result.exit_code == 0, out(result)
    assert b"hello from upstream: GET /plain" in result.stdout
    assert result.violations == ()
    assert "api.test" in box.resolver.lookups


def test_container_allowed_name_over_connect(box: Net) -> None:
    # A raw CONNECT through the bridge (socat is in the image), then a request in the tunnel.
    script = (
        f"(printf 'CONNECT api.test:{box.port} HTTP/1.1\\r\\n\\r\\n'; sleep 1; "
        "printf 'GET /tunnelled HTTP/1.0\\r\\nHost: api.test\\r\\n\\r\\n'; sleep 2) "
        "| socat -t 5 - TCP:127.0.0.1:3128"
    )
    result = box.ok(box.allowed, "sh", "-c", script)
    assert b" 200 " in result.stdout.split(b"\r\n")[0], out(result)
    assert b"hello from upstream: GET /tunnelled" in result.stdout
    assert result.violations == ()


def test_container_unlisted_domain_is_blocked_with_a_violation(box: Net) -> None:
    result = box.ok(box.allowed, "wget", "-q", "-O-", f"http://evil.test:{box.port}/")
    assert result.exit_code != 0
    assert b"403" in result.stderr, out(result)
    assert details(result) == [f"blocked GET evil.test:{box.port}: not in the allowlist"]
    assert "evil.test" not in box.resolver.lookups


def test_container_direct_connection_bypassing_the_proxy_fails(box: Net) -> None:
    before = len(box.upstream.requests)
    url = f"http://127.0.0.1:{box.port}/"
    # (No `-T`: this busybox's wget crashes with it, which would pass `!= 0` unconnected.)
    direct = box.ok(box.allowed, "wget", "-q", "-O-", "-Y", "off", url)
    assert direct.signal is None and direct.exit_code not in (0, None), out(direct)
    raw = box.ok(box.allowed, "socat", "-T", "5", "-", f"TCP:127.0.0.1:{box.port}")
    assert raw.exit_code != 0, out(raw)
    assert len(box.upstream.requests) == before


def test_container_has_no_route_and_no_dns(box: Net) -> None:
    routes = box.ok(box.allowed, "cat", "/proc/net/route").stdout.decode().splitlines()
    assert routes[1:] == []
    # Name resolution has no route to any resolver: it fails without sending anything.
    lookup = box.ok(box.allowed, "wget", "-q", "-O-", "-Y", "off", "http://api.test/")
    assert lookup.signal is None and lookup.exit_code not in (0, None), out(lookup)
    assert b"hello from upstream" not in lookup.stdout


def test_container_gets_the_proxy_environment_and_a_read_only_socket(box: Net) -> None:
    result = box.ok(
        box.allowed,
        "sh",
        "-c",
        "echo $http_proxy; [ -S /run/mechasandbox/proxy.sock ] && echo socket; "
        "rm -f /run/mechasandbox/proxy.sock || echo kept",
    )
    lines = result.stdout.decode().split()
    assert lines == ["http://127.0.0.1:3128", "socket", "kept"], out(result)


def test_container_violations_survive_a_timeout(box: Net) -> None:
    policy = attrs.evolve(box.allowed, limits=Limits(timeout_s=4))
    result = box.run(policy, "sh", "-c", "wget -q -O- http://evil.test/ ; exec sleep 30")
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, Timeout)
    assert [v.detail for v in error.partial.violations] == [
        "blocked GET evil.test:80: not in the allowlist"
    ]


def test_pooled_containers_do_not_claim_the_allowlist(box: Net) -> None:
    backend = box.backend
    assert isinstance(backend, DockerBackend | PodmanBackend)
    pooled = PooledBackend(backend=backend, settings=PoolSettings(size=1))
    try:
        caps = pooled.probe().unwrap()
        assert Protection.NETWORK_ALLOWLIST not in caps.enforced
        assert "not bridged" in dict(caps.details)[Protection.NETWORK_ALLOWLIST]
        strict = attrs.evolve(box.allowed, enforcement=Enforcement.STRICT)
        request = RunRequest(argv=("true",), workspace=str(box.workspace))
        refused = anyio.run(pooled.run, request, strict)
        assert isinstance(refused, Failure), refused
    finally:
        pooled.close()
