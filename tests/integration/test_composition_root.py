"""`Application.from_config`: the one composition root the CLI and library users share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, assert_type

import pytest
from returns.result import Failure

from mechasandbox.backends import catalog
from mechasandbox.backends.base import Backend
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.linux.landlock import LandlockBackend
from mechasandbox.backends.registry import MissingBackend
from mechasandbox.config.changes import PolicyChanges
from mechasandbox.containers import Application
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Enforcement, NetworkMode, NetworkPolicy, Policy
from mechasandbox.sandbox import Sandbox
from mechasandbox.testing import FakeRunner
from tests.conftest import require_available

BEST_EFFORT = Policy(enforcement=Enforcement.BEST_EFFORT)
SRC = str(Path(__file__).resolve().parents[2] / "src")

USER_FILE = """
[limits]
timeout = "42s"
max_open_files = 512
[filesystem]
readable = ["/opt"]
[backend]
name = "process"
pool_size = 3
"""
PROJECT_FILE = """
[limits]
timeout = "30s"
max_open_files = 256
[backend]
pool_size = 9
"""


@pytest.fixture
def layered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace with a project file, and a user file in this test's XDG_CONFIG_HOME."""
    config_home = tmp_path / "config"
    (config_home / "mechasandbox").mkdir(parents=True)
    (config_home / "mechasandbox" / "config.toml").write_text(USER_FILE)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    workspace = tmp_path / "repo"
    workspace.mkdir()
    (workspace / ".mechasandbox.toml").write_text(PROJECT_FILE)
    return workspace


def _built(workspace: Path, **options: object) -> Application:
    built = Application.from_config(workspace=str(workspace), **options)  # type: ignore[arg-type]
    assert not isinstance(built, Failure), built
    return built.unwrap()


def test_every_layer_reaches_the_container(layered: Path) -> None:
    app = _built(layered)
    try:
        policy = app.services.policy()
        assert policy.limits.timeout_s == 30.0  # the project narrowed the user's 42 s
        assert "/opt" in policy.filesystem.readable
        assert app.config.backend() == "process"
        assert app.backends.deps().pool_size == 3  # the user's; the project's is ignored
        assert any("pool_size ignored" in w for w in app.config.warnings())
        sandbox = app.services.sandbox()
        assert_type(sandbox, Sandbox)
        assert sandbox.policy == policy
        assert sandbox.workspace == str(layered)
        assert sandbox.backend.name == "process"
    finally:
        app.shutdown_resources()


def test_explicit_changes_come_last_and_may_widen(layered: Path) -> None:
    changes = PolicyChanges(
        limits=(("timeout_s", 600.0),), network=NetworkMode.FULL, backend="none"
    )
    app = _built(layered, changes=changes)
    try:
        policy = app.services.policy()
        assert policy.limits.timeout_s == 600.0
        assert policy.network.mode is NetworkMode.FULL
        assert app.services.sandbox().backend.name == "none"
    finally:
        app.shutdown_resources()


def test_a_hostile_project_file_is_an_error_not_a_policy(tmp_path: Path) -> None:
    (tmp_path / ".mechasandbox.toml").write_text('[network]\nmode = "full"\n')
    built = Application.from_config(workspace=str(tmp_path), user_file=None)
    assert isinstance(built, Failure)
    assert built.failure().kind == "config_invalid"
    assert "widen" in built.failure().message


def test_the_library_plans_what_the_cli_plans(layered: Path) -> None:
    """The same layers, the same call: `mechasandbox policy --json` and the library's plan
    agree, section for section."""
    env = {**os.environ, "PYTHONPATH": SRC}
    shown = subprocess.run(
        [sys.executable, "-m", "mechasandbox", "policy", "--json", "--", "echo", "hi"],
        cwd=layered,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    app = _built(layered)
    try:
        planned = app.services.sandbox().plan(["echo", "hi"]).unwrap()
    finally:
        app.shutdown_resources()
    cli = json.loads(shown.stdout)
    assert cli["backend"] == planned.backend == "process"
    assert cli["sections"] == dict(planned.sections)
    assert "RLIMIT_NOFILE soft=256 hard=256" in cli["sections"]["rlimits"]


def test_limits_and_network_are_overridable_providers(tmp_path: Path) -> None:
    app = _built(tmp_path, user_file=None)
    try:
        app.services.limits.override(Limits(timeout_s=5.0))
        app.services.network.override(NetworkPolicy(mode=NetworkMode.FULL))
        policy = app.services.sandbox().policy
        assert policy.limits.timeout_s == 5.0
        assert policy.network.mode is NetworkMode.FULL
    finally:
        app.shutdown_resources()


def test_an_unknown_backend_is_missing_never_another() -> None:
    app = Application()
    app.config.from_dict({"backend": "no-such-backend"})
    app.core.runner.override(FakeRunner())
    selected = app.backends.selected()
    assert isinstance(selected, MissingBackend)
    probed = selected.probe()
    assert isinstance(probed, Failure)
    assert "unknown backend 'no-such-backend'" in probed.failure().reason


def test_every_catalog_entry_is_built_by_the_root() -> None:
    app = Application()
    app.core.runner.override(FakeRunner())
    try:
        for entry in catalog.CATALOG:
            backend = app.backends.named(entry.name)
            assert_type(backend, Backend)
            assert backend.name == entry.name
        assert app.backends.auto().name == "auto"
        candidates = [b.name for b in app.backends.auto().candidates]  # type: ignore[attr-defined]
        assert candidates == list(catalog.AUTO_ORDER)
    finally:
        app.shutdown_resources()


def test_backend_names_come_from_the_catalog() -> None:
    from mechasandbox.cli.verbs import build_parser

    parser = build_parser("run")
    with pytest.raises(Exception, match="invalid choice") as raised:
        parser.parse_args(["run", "--backend", "nope", "--", "true"])
    assert all(repr(name) in str(raised.value) for name in catalog.NAMES)
    assert "none" not in catalog.AUTO_ORDER
    assert {"none", "process"} == catalog.UNCONFINED


def test_backend_state_belongs_to_the_root(tmp_path: Path) -> None:
    """What backends keep across runs is the root's: shared by its backends and released
    by `shutdown_resources()` (here: landlock's kept private tmp dir, after a real run)."""
    app = Application()
    app.config.from_dict({"backend": "landlock", "policy": BEST_EFFORT})
    try:
        landlock = app.backends.named("landlock")
        require_available(landlock)
        assert isinstance(landlock, LandlockBackend)
        assert landlock.tmp_dirs is app.backends.tmp_dirs()
        bubblewrap = app.backends.named("bubblewrap")
        assert isinstance(bubblewrap, BubblewrapBackend)
        assert bubblewrap.placeholders is app.backends.placeholders()
        assert landlock.git is bubblewrap.git is app.backends.git_facts()
        result = app.services.sandbox().run_sync(
            ["sh", "-c", 'echo "$TMPDIR"'], workspace=str(tmp_path)
        )
        tmp = result.unwrap().stdout.decode().strip()
        assert tmp and os.path.isdir(tmp)  # kept for the next run
        cgroups = app.backends.cgroups()
        assert landlock.cgroups is cgroups is bubblewrap.cgroups
        pooled = (
            [d for group in cgroups._pool.idle for d in group]
            if not isinstance(cgroups, str)
            else []
        )
        assert pooled or isinstance(cgroups, str)  # the run's cgroup went back to the pool
        assert all(os.path.isdir(d) for d in pooled)
    finally:
        app.shutdown_resources()
    assert not os.path.exists(tmp)
    assert not any(os.path.exists(d) for d in pooled)  # the pool of cgroups went too


def test_backends_close_before_the_state_they_keep(monkeypatch: pytest.MonkeyPatch) -> None:
    """`shutdown_resources()` ends the backends (docker's warm pool ends its containers
    there) before the state they keep (the placeholders those containers stand on)."""
    from mechasandbox.backends.oci import OciBackend, PooledBackend
    from mechasandbox.backends.oci.state import EngineState

    closed: list[str] = []
    for cls, name in ((PooledBackend, "pool"), (EngineState, "engine state")):
        original = cls.close

        def recording(self: object, _original: Any = original, _name: str = name) -> None:
            closed.append(_name)
            _original(self)

        monkeypatch.setattr(cls, "close", recording)
    app = Application()
    app.config.from_dict({"backend": "docker", "pool_size": 1})
    app.core.runner.override(FakeRunner())
    pooled = app.backends.selected()
    assert isinstance(pooled, PooledBackend)
    podman = app.backends.named("podman")  # shares the engine state and the git facts
    assert isinstance(podman, OciBackend)
    assert podman.git is pooled.backend.git is app.backends.git_facts()
    app.shutdown_resources()
    assert closed == ["pool", "engine state"]
