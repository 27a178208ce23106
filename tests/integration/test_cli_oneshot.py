"""The CLI's one-shot path: which calls take it, that it builds and plans exactly what the
containers would, that it stays out of asyncio, the containers and the proxy, and that a
run interrupted or killed mid-way leaves nothing behind."""

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
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import Backend, HostContext
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.linux.bwrap_probe import PROBE_NAME, probe_key
from mechasandbox.backends.names import AUTO_ORDER, LOOPLESS
from mechasandbox.backends.probe_cache import ProbeCache
from mechasandbox.backends.registry import choose
from mechasandbox.cli import oneshot
from mechasandbox.cli.main import main
from mechasandbox.containers import Application
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import BackendUnavailable
from mechasandbox.domain.policy import Enforcement, NetworkMode, NetworkPolicy, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.runner.blocking import BlockingHelperRunner
from mechasandbox.runner.escapers import ESCAPERS, PeakCounter, escaper_script
from mechasandbox.runner.proctable import alive_with_marker
from mechasandbox.testing import FakeRunner, ScriptedBackend
from tests.conftest import require_available

SRC = str(Path(__file__).resolve().parents[2] / "src")
LINUX = sys.platform.startswith("linux")
ALLOWLIST = Policy(network=NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=("example.com",)))
# What a one-shot call must not import: the event loop, the containers, the proxy, the
# configuration layers (no configuration file here) and the other platforms' backends.
NOT_IMPORTED = (
    "asyncio",
    "anyio",
    "dependency_injector",
    "cattrs",
    "tomllib",
    "mechasandbox.containers",
    "mechasandbox.network.proxy",
    "mechasandbox.network.session",
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
def test_a_run_imports_no_event_loop_containers_or_proxy(
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
    assert sorted(leaked) == []


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
    assert {"mechasandbox.containers", "anyio"} <= modules


def test_which_calls_take_the_one_shot_path(runner: BlockingHelperRunner) -> None:
    host = HostContext.current()
    for name in sorted(LOOPLESS):
        built = oneshot.loopless_backend(name, Policy(), runner=runner, host=host)
        assert built is not None and built.name == name
        assert oneshot.loopless_backend(name, ALLOWLIST, runner=runner, host=host) is None
        planned = oneshot.loopless_backend(name, ALLOWLIST, runner=runner, host=host, runs=False)
        assert planned is not None  # planning starts no proxy
    for name in ("docker", "podman", "seatbelt", "apple-container"):
        assert oneshot.loopless_backend(name, Policy(), runner=runner, host=host) is None


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
    def build(name: str, *_args: object) -> Backend:
        available, enforces = states.get(name, (False, False))
        return _Probed(name, available=available, enforces=enforces)

    monkeypatch.setattr(oneshot, "_build", build)
    for policy in (Policy(), Policy(enforcement=Enforcement.BEST_EFFORT)):
        chosen = oneshot.loopless_backend("auto", policy, runner=runner, host=HostContext.current())
        assert (chosen.name if chosen else None) == expected
        if chosen is not None:
            picked = choose([build(n) for n in AUTO_ORDER], policy)
            assert isinstance(picked, Success)
            assert picked.unwrap().name == expected


@pytest.mark.parametrize("name", sorted(LOOPLESS))
def test_the_one_shot_backend_plans_what_the_containers_plan(
    tmp_path: Path, name: str, runner: BlockingHelperRunner
) -> None:
    host = HostContext.current()
    policy = Policy(enforcement=Enforcement.BEST_EFFORT)
    request = RunRequest(argv=("echo", "hi"), workspace=str(tmp_path))
    direct = oneshot.loopless_backend(name, policy, runner=runner, host=host)
    assert direct is not None
    app = Application()
    app.config.from_dict({"backend": name})
    app.core.runner.override(FakeRunner())
    try:
        composed = app.backends.selected()
        assert type(composed) is type(direct)
        assert direct.plan(request, policy, host) == composed.plan(request, policy, host)
        assert direct.probe() == composed.probe()
    finally:
        app.shutdown_resources()


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
    assert seen.peak == ESCAPERS
    assert alive_with_marker(marker) == []
