"""Real tools under the real Seatbelt profile, one test per tool class: git through the Xcode
shim (the `DEVELOPER_N` parameter), python3, node, clang with modules, a TLS client in
allowlist mode. They run only on macOS runners (the `macos` workflow, where
MECHASANDBOX_REQUIRE_BACKENDS=seatbelt makes a missing backend fail); elsewhere they skip
with the reason. A tool missing from the runner skips with its name. No test sends traffic
beyond loopback: the TLS test serves HTTPS itself on 127.0.0.1."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from returns.result import Success

from mechasandbox.backends.macos import platform
from mechasandbox.backends.macos.seatbelt import SeatbeltBackend
from mechasandbox.domain import (
    Enforcement,
    NetworkMode,
    NetworkPolicy,
    Policy,
    RunRequest,
    RunResult,
)
from mechasandbox.network.session import EgressProxy
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available

pytestmark = [
    pytest.mark.backend("seatbelt"),
    pytest.mark.skipif(sys.platform != "darwin", reason="runs real macOS tools (macOS runners)"),
]
BASE = Policy(enforcement=Enforcement.BEST_EFFORT)


@pytest.fixture
def seatbelt(runner: HelperProcessRunner) -> SeatbeltBackend:
    backend = SeatbeltBackend(runner=runner)
    require_available(backend)
    return backend


def run(
    backend: SeatbeltBackend, workspace: Path, argv: list[str], policy: Policy = BASE
) -> RunResult:
    result = anyio.run(backend.run, RunRequest(argv=argv, workspace=str(workspace)), policy)
    assert isinstance(result, Success), result
    finished: RunResult = result.unwrap()
    return finished


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed on this runner")
    return found


def test_git_runs_through_the_xcode_shim(seatbelt: SeatbeltBackend, tmp_path: Path) -> None:
    """`/usr/bin/git` is an xcrun shim: it works only if the selected Xcode, at its real
    path (`Xcode_16.x.app` on runner images), is readable."""
    roots = platform.developer_roots(
        dict(os.environ), readlink=_readlink, realpath=os.path.realpath
    )
    assert roots, "no Xcode bundle resolved"
    result = run(seatbelt, tmp_path, ["/usr/bin/git", "--version"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(b"git version"), result.stdout


def test_python3_with_multiprocessing(seatbelt: SeatbeltBackend, tmp_path: Path) -> None:
    script = (
        "import multiprocessing as mp, os\n"
        "from multiprocessing import shared_memory\n"
        "s = shared_memory.SharedMemory(create=True, size=16); s.buf[0] = 7\n"
        "with mp.Pool(2) as pool: print(sum(pool.map(abs, [-1, -2])), s.buf[0])\n"
        "s.close(); s.unlink(); print(os.cpu_count() > 0)\n"
    )
    result = run(seatbelt, tmp_path, [need("python3"), "-c", script])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [b"3", b"7", b"True"]


def test_node_reads_the_machine(seatbelt: SeatbeltBackend, tmp_path: Path) -> None:
    script = (
        "const os = require('os');"
        "console.log(os.cpus().length > 0, typeof os.networkInterfaces(), os.totalmem() > 0)"
    )
    result = run(seatbelt, tmp_path, [need("node"), "-e", script])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [b"true", b"object", b"true"]


def test_clang_modules_land_in_the_private_tmpdir(
    seatbelt: SeatbeltBackend, tmp_path: Path
) -> None:
    (tmp_path / "m.c").write_text('@import Darwin;\nint main(void) { return puts("ok") < 0; }\n')
    script = (
        "clang -fmodules -x objective-c m.c -o m && ./m && "
        'test -n "$(ls "$CLANG_MODULE_CACHE_PATH")" && echo cached'
    )
    result = run(seatbelt, tmp_path, ["/bin/sh", "-c", script])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [b"ok", b"cached"]


def test_tls_clients_in_allowlist_mode(runner: HelperProcessRunner, tmp_path: Path) -> None:
    """TLS clients reach an allowed HTTPS server through the run's proxy, and only it.

    Loopback only: the server is this test's, on 127.0.0.1 with a certificate from a CA the
    test makes and throws away, listed as an IP literal (`127.0.0.1:PORT`: the proxy
    refuses loopback unless a literal names it). A second server of the test, not listed,
    must see no connection. curl takes the CA with `--cacert`, Python with `cafile`.

    Go on macOS ignores `SSL_CERT_FILE` (since Go 1.18 its system roots are the platform
    verifier's, `crypto/x509/root_darwin.go`) and never proxies a loopback address taken
    from the environment (`httpproxy`), so the program names both itself: it adds the CA to
    the system pool and uses the proxy URL of `HTTPS_PROXY`. Go then asks the platform
    verifier first (the Security framework: trustd and the security server, the
    allowances under test), which does not trust the throwaway CA, and falls back to its
    own verifier with the added root. So the Go check shows that the platform path ran
    without a denial of those services (when the log was readable), not that the platform
    trusted the CA: that would need the CA in a keychain, a change to the host.
    """
    backend = SeatbeltBackend(runner=runner, egress=EgressProxy())
    require_available(backend)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    ca = make_throwaway_ca(tmp_path / "pki", workspace)
    with TlsServer(ca) as allowed, TlsServer(ca) as unlisted:
        policy = Policy(
            network=NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=(f"127.0.0.1:{allowed.port}",)),
            enforcement=Enforcement.BEST_EFFORT,
        )
        curl = run(
            backend,
            workspace,
            ["/usr/bin/curl", "-sSf", "--cacert", "ca.pem", allowed.url],
            policy,
        )
        assert curl.exit_code == 0, curl.stderr
        assert curl.stdout == TlsServer.BODY

        denied = run(
            backend,
            workspace,
            ["/usr/bin/curl", "-sSf", "--cacert", "ca.pem", unlisted.url],
            policy,
        )
        assert denied.exit_code != 0
        assert unlisted.connections == 0
        assert any(str(unlisted.port) in v.detail for v in denied.violations), denied

        script = (
            "import os, ssl, sys, urllib.request as u\n"
            "opener = u.build_opener(u.ProxyHandler({'https': os.environ['HTTPS_PROXY']}),\n"
            "    u.HTTPSHandler(context=ssl.create_default_context(cafile='ca.pem')))\n"
            "sys.stdout.buffer.write(opener.open(sys.argv[1], timeout=30).read())\n"
        )
        python = run(backend, workspace, [need("python3"), "-c", script, allowed.url], policy)
        assert python.exit_code == 0, python.stderr
        assert python.stdout == TlsServer.BODY

        go = need("go")
        (workspace / "main.go").write_text(GO_CLIENT)
        result = run(backend, workspace, [go, "run", "main.go", allowed.url], policy)
        assert result.exit_code == 0, result.stderr
        assert result.stdout == TlsServer.BODY
        if not any(note.startswith("violations not reported") for note in result.notes):
            services = platform.MACH_SERVICES_TLS
            refused = [v for v in result.violations if any(s in v.detail for s in services)]
            assert not refused, refused
        assert unlisted.connections == 0


GO_CLIENT = """package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/url"
	"os"
)

func main() {
	pool, err := x509.SystemCertPool()
	if err != nil {
		panic(err)
	}
	ca, err := os.ReadFile("ca.pem")
	if err != nil || !pool.AppendCertsFromPEM(ca) {
		panic("ca.pem")
	}
	proxy, err := url.Parse(os.Getenv("HTTPS_PROXY"))
	if err != nil {
		panic(err)
	}
	client := &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyURL(proxy),
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}}
	response, err := client.Get(os.Args[1])
	if err != nil {
		panic(err)
	}
	defer response.Body.Close()
	if _, err := io.Copy(os.Stdout, response.Body); err != nil {
		panic(err)
	}
}
"""

# A CA and a server certificate for 127.0.0.1, made with the system's `openssl` (LibreSSL on
# macOS): classic `req`/`x509` options and a config file, which LibreSSL and OpenSSL both
# read. Short-lived, RSA 2048, SHA-256, serverAuth: within Apple's rules for TLS servers.
OPENSSL_CONFIG = """[req]
distinguished_name = dn
prompt = no
[dn]
CN = mechasandbox throwaway test CA
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@attrs.frozen
class ThrowawayCa:
    certificate: Path  # in the workspace, as `ca.pem`, for the clients
    server_certificate: Path
    server_key: Path


def make_throwaway_ca(directory: Path, workspace: Path) -> ThrowawayCa:
    """A fresh CA (its key stays in `directory`, outside the workspace) and a certificate
    for 127.0.0.1 signed by it; the CA certificate is copied into the workspace."""
    openssl = need("openssl")
    directory.mkdir()
    config = directory / "openssl.cnf"
    config.write_text(OPENSSL_CONFIG)
    new_key = ["-newkey", "rsa:2048", "-nodes", "-sha256", "-config", str(config)]
    steps = [
        [openssl, "req", "-x509", *new_key, "-extensions", "ca", "-days", "2",
         "-keyout", "ca.key", "-out", "ca.pem"],
        [openssl, "req", "-new", *new_key, "-subj", "/CN=127.0.0.1",
         "-keyout", "server.key", "-out", "server.csr"],
        [openssl, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-set_serial", "2", "-days", "2", "-sha256", "-extfile", str(config),
         "-extensions", "leaf", "-out", "server.pem"],
    ]  # fmt: skip
    for argv in steps:
        subprocess.run(argv, cwd=directory, check=True, capture_output=True, timeout=60)
    shutil.copyfile(directory / "ca.pem", workspace / "ca.pem")
    return ThrowawayCa(
        certificate=workspace / "ca.pem",
        server_certificate=directory / "server.pem",
        server_key=directory / "server.key",
    )


class TlsServer:
    """An HTTPS server on 127.0.0.1 (a random port) in a thread, for the test's duration;
    `connections` counts the connections it accepted."""

    BODY = b"hello over TLS\n"

    def __init__(self, ca: ThrowawayCa) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(ca.server_certificate, ca.server_key)
        self.connections = 0
        counted = self

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                connection, address = self.socket.accept()
                counted.connections += 1
                connection.settimeout(30)
                # The handshake happens on the first read, in the connection's own thread,
                # so a client that stalls it does not hold up the next accept.
                wrapped = context.wrap_socket(
                    connection, server_side=True, do_handshake_on_connect=False
                )
                return wrapped, address

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(TlsServer.BODY)))
                self.end_headers()
                self.wfile.write(TlsServer.BODY)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TlsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
