"""The CLI's loop-free path: which calls take it, that `auto` resolves there only to what
`choose` would pick, that it stays out of the event loop and the proxy, and that a run
interrupted or killed mid-way leaves nothing behind."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import Backend
from mechasandbox.backends.catalog import AUTO_ORDER, LOOPLESS
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.linux.bwrap_probe import PROBE_NAME, probe_key
from mechasandbox.backends.probe_cache import ProbeCache
from mechasandbox.backends.registry import choose
from mechasandbox.cli import oneshot
from mechasandbox.cli.main import main
from mechasandbox.containers import Application
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import BackendUnavailable
from mechasandbox.domain.policy import Enforcement, NetworkMode, NetworkPolicy, Policy
from mechasandbox.runner.blocking import BlockingHelperRunner
from mechasandbox.runner.escapers import ESCAPERS, PeakCounter, escaper_script
from mechasandbox.runner.proctable import alive_with_marker
from mechasandbox.testing import ScriptedBackend
from tests.conftest import require_available

SRC = str(Path(__file__).resolve().parents[2] / "src")
LINUX = sys.platform.startswith("linux")
DEFAULT = Policy()
ALLOWLIST = Policy(network=NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=("example.com",)))
# What a loop-free call must not import: the event loop library, the proxy, the
# configuration layers (no configuration file here) and the other platforms' backends.
# (The composition root, dependency-injector, imports asyncio itself; no loop runs.)
NOT_IMPORTED = (
    "anyio",
    "cattrs",
    "tomllib",
    # The proxy's settings and resolver are values every backend keeps; the proxy is not.
    "mechasandbox.network.proxy.serving",
    "mechasandbox.network.proxy.core",
    "mechasandbox.config.layers",
    "mechasandbox.backends.oci",
    "mechasandbox.backends.macos",
)


@pytest.fixture(scope="module")
def runner() -> Iterator[BlockingHelperRunner]:
    blocking = BlockingHelperRunner(prestart=False)
    yield blocking
    blocking.close()


def _imports_of(workspace: Path, *argv: str) -> tuple[int, set[str]]:
    script = (
        "import json, sys\n"
        "from mechasandbox.cli.main import main\n"
        f"status = main({list(argv)!r})\n"
        "sys.stderr.write('\\n' + json.dumps([status, sorted(sys.modules)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=workspace,
        env={**os.environ, "PYTHONPATH": SRC},
        check=False,
        timeout=60,
    )
    status, modules = json.loads(done.stderr.splitlines()[-1])
    return status, set(modules)


@pytest.mark.parametrize("backend", ["process", "bubblewrap"])
def test_a_run_imports_no_event_loop_or_proxy(
    tmp_path: Path, backend: str, runner: BlockingHelperRunner
) -> None:
    if backend == "bubblewrap":
        require_available(BubblewrapBackend(runner=runner))
    status, modules = _imports_of(
        tmp_path, "run", "--backend", backend, "--best-effort", "--json", "--", "true"
    )
    assert status == 0
    assert "mechasandbox.runner.blocking" in modules
    leaked = [m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_IMPORTED)]
    assert sorted(leaked) == [], leaked


def test_an_allowlist_run_takes_the_containers(tmp_path: Path) -> None:
    status, modules = _imports_of(
        tmp_path,
        "run",
        "--backend",
        "process",
        "--best-effort",
        "--network",
        "allowlist",
        "--allow-domain",
        "example.com",
        "--json",
        "--",
        "true",
    )
    assert status == 0
    assert "anyio" in modules


def _app(backend: str, policy: Policy = DEFAULT) -> Application:
    app = Application()
    app.config.from_dict({"backend": backend, "policy": policy})
    return app


def _loopless(app: Application, runner: BlockingHelperRunner, *, runs: bool = True) -> bool:
    try:
        return oneshot.go_loopless(app, None, runs=runs)
    finally:
        app.shutdown_resources()


def test_which_calls_take_the_one_shot_path(runner: BlockingHelperRunner) -> None:
    for name in sorted(LOOPLESS):
        app = _app(name)
        assert _loopless(app, runner)
        assert app.backends.selected().name == name
        assert isinstance(app.core.runner(), BlockingHelperRunner)
        assert not _loopless(_app(name, ALLOWLIST), runner)
        assert _loopless(_app(name, ALLOWLIST), runner, runs=False)  # planning starts no proxy
    for name in ("docker", "podman", "seatbelt", "apple-container"):
        app = _app(name)
        assert not _loopless(app, runner)
        assert not isinstance(app.core.runner(), BlockingHelperRunner)
        app.shutdown_resources()


class _Probed(ScriptedBackend):
    """A backend that is available or not, and enforces everything or nothing."""

    def __init__(self, name: str, *, available: bool, enforces: bool) -> None:
        super().__init__(backend_name=name)
        self.available = available
        self.enforces = enforces

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        if not self.available:
            return Failure(BackendUnavailable(backend=self.name, reason="not here"))
        enforced = frozenset(Protection) if self.enforces else frozenset()
        return Success(Capabilities(backend=self.name, enforced=enforced))


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({"bubblewrap": (True, True)}, "bubblewrap"),
        ({"bubblewrap": (False, False), "landlock": (True, True)}, "landlock"),
        ({"bubblewrap": (True, False), "landlock": (True, True)}, "landlock"),
        # Neither enforces the whole policy: a later backend (a container) might, so the
        # containers choose, as they would for best-effort too.
        ({"bubblewrap": (True, False), "landlock": (True, False)}, None),
        ({"bubblewrap": (False, False), "landlock": (False, False)}, None),
    ],
)
def test_auto_resolves_only_to_what_choose_would_pick(
    monkeypatch: pytest.MonkeyPatch,
    states: dict[str, tuple[bool, bool]],
    expected: str | None,
    runner: BlockingHelperRunner,
) -> None:
    def build(name: str) -> Backend:
        available, enforces = states.get(name, (False, False))
        return _Probed(name, available=available, enforces=enforces)

    for policy in (Policy(), Policy(enforcement=Enforcement.BEST_EFFORT)):
        app = _app("auto", policy)
        for name, provider in app.backends.named.providers.items():
            provider.override(providers.Object(build(name)))
        loopless = _loopless(app, runner)
        chosen = app.backends.selected() if loopless else None
        assert (chosen.name if chosen else None) == expected
        if chosen is not None:
            picked = choose([build(n) for n in AUTO_ORDER], policy)
            assert isinstance(picked, Success)
            assert picked.unwrap().name == expected


@pytest.mark.skipif(not LINUX, reason="bubblewrap is Linux-only")
def test_a_run_remembers_the_bwrap_probe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], runner: BlockingHelperRunner
) -> None:
    require_available(BubblewrapBackend(runner=runner))
    status = main(
        ["run", "--backend", "bubblewrap", "--json", "--workspace", str(tmp_path), "--", "true"]
    )
    assert status == 0, capsys.readouterr().out
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    key = probe_key(bwrap)
    assert key is not None
    assert ProbeCache().load(PROBE_NAME, key) is not None  # XDG_CACHE_HOME: this test's


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL])
def test_a_cli_stopped_mid_run_leaves_nothing(tmp_path: Path, stop: signal.Signals) -> None:
    """Ctrl-C: the CLI kills the tree before it exits. Killed outright: its spawn helper sees
    the CLI gone and kills the tree."""
    marker = f"oneshot-{secrets.token_hex(4)}"
    script = escaper_script(marker)
    options = ["--backend", "process", "--best-effort", "--workspace", str(tmp_path)]
    cli = subprocess.Popen(
        [sys.executable, "-m", "mechasandbox", "run", *options, "--", "sh", "-c", script],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with PeakCounter(marker) as seen:
        deadline = time.monotonic() + 20
        while len(alive_with_marker(marker)) < ESCAPERS and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # seen by the counter too
        cli.send_signal(stop)
        cli.wait(timeout=20)
        for _ in range(60):
            if not alive_with_marker(marker):
                break
            time.sleep(0.05)
    assert seen.peak >= ESCAPERS  # every escaper ran (see PeakCounter)
    assert alive_with_marker(marker) == []
