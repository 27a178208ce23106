"""Real tools under the real Seatbelt profile, one test per tool class: git through the Xcode
shim (the `DEVELOPER_N` parameter), python3, node, clang with modules, a TLS client in
allowlist mode. They run only on macOS runners (the `macos` workflow, where
MECHASANDBOX_REQUIRE_BACKENDS=seatbelt makes a missing backend fail); elsewhere they skip
with the reason. A tool missing from the runner skips with its name; the TLS test needs the
internet and runs only where MECHASANDBOX_NETWORK_TESTS=1 (the macOS workflow sets it)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import anyio
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


@pytest.mark.skipif(
    os.environ.get("MECHASANDBOX_NETWORK_TESTS") != "1",
    reason="reaches the internet (set MECHASANDBOX_NETWORK_TESTS=1; the macOS workflow does)",
)
def test_tls_client_in_allowlist_mode(runner: HelperProcessRunner, tmp_path: Path) -> None:
    """Go's client verifies certificates through the Security framework (trustd, the
    security server, the network configuration): the allowlist's TLS services."""
    backend = SeatbeltBackend(runner=runner, egress=EgressProxy())
    require_available(backend)
    policy = Policy(
        network=NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=("pypi.org",)),
        enforcement=Enforcement.BEST_EFFORT,
    )
    curl = run(
        backend,
        tmp_path,
        ["/usr/bin/curl", "-sSf", "-o", "/dev/null", "https://pypi.org/simple/"],
        policy,
    )
    assert curl.exit_code == 0, curl.stderr
    denied = run(backend, tmp_path, ["/usr/bin/curl", "-sSf", "https://example.com/"], policy)
    assert denied.exit_code != 0
    go = need("go")
    (tmp_path / "main.go").write_text(
        'package main\nimport ("fmt"; "net/http")\n'
        'func main() { r, err := http.Get("https://pypi.org/simple/"); '
        "if err != nil { panic(err) }; fmt.Println(r.StatusCode) }\n"
    )
    result = run(backend, tmp_path, [go, "run", "main.go"], policy)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == b"200"


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
