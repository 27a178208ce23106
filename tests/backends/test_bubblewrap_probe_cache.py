"""Bubblewrap's remembered probe: when it is used, when it is not, and that a stale record
fails closed (the run fails with bwrap's error; the command never runs unsandboxed)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from returns.result import Failure

from mechasandbox.backends.linux import bwrap_probe, host_facts
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.linux.bwrap_layout import BwrapFeatures
from mechasandbox.backends.linux.bwrap_probe import PROBE_NAME, probe_key, remembered_probe
from mechasandbox.backends.probe_cache import ProbeCache
from mechasandbox.domain.errors import BackendFailed
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="bubblewrap is Linux-only"
)


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    """Each test sees its own processes' view: nothing remembered in this one."""
    remembered_probe.cache_clear()
    yield
    remembered_probe.cache_clear()


@pytest.fixture
def cache(tmp_path: Path) -> ProbeCache:
    return ProbeCache(directory=str(tmp_path / "cache"))


@pytest.fixture
def tool(tmp_path: Path) -> Path:
    """A stand-in executable whose identity the tests change."""
    path = tmp_path / "bin" / "bwrap"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


class Probes:
    """`probe_bwrap` replaced: counts the real probes, answers `answer`."""

    def __init__(self, answer: BwrapFeatures | str) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self, path: str) -> BwrapFeatures | str:
        self.calls += 1
        return self.answer


def fake_probe(monkeypatch: pytest.MonkeyPatch, answer: BwrapFeatures | str) -> Probes:
    probes = Probes(answer)
    monkeypatch.setattr(bwrap_probe, "probe_bwrap", probes)
    return probes


def again(path: Path, cache: ProbeCache) -> BwrapFeatures | str:
    """What the next process would get."""
    remembered_probe.cache_clear()
    return remembered_probe(str(path), cache)


def test_a_success_is_remembered_for_the_next_process(
    monkeypatch: pytest.MonkeyPatch, cache: ProbeCache, tool: Path
) -> None:
    probes = fake_probe(monkeypatch, BwrapFeatures(path=str(tool), version=(0, 9, 0)))
    assert again(tool, cache) == BwrapFeatures(path=str(tool), version=(0, 9, 0))
    assert again(tool, cache) == BwrapFeatures(path=str(tool), version=(0, 9, 0))
    assert probes.calls == 1


def test_the_landlock_abi_is_remembered_with_it_and_an_older_record_probed_again(
    monkeypatch: pytest.MonkeyPatch, cache: ProbeCache, tool: Path
) -> None:
    probed = BwrapFeatures(path=str(tool), version=(0, 9, 0), landlock_abi=6)
    probes = fake_probe(monkeypatch, probed)
    assert again(tool, cache) == probed
    assert again(tool, cache) == probed  # the ABI from the record: no Landlock loaded
    assert probes.calls == 1
    key = probe_key(str(tool))
    assert key is not None
    cache.store(PROBE_NAME, key, {"version": [0, 9, 0]})  # written before the ABI was kept
    assert again(tool, cache) == probed
    assert probes.calls == 2


def test_a_failure_is_never_remembered(
    monkeypatch: pytest.MonkeyPatch, cache: ProbeCache, tool: Path
) -> None:
    probes = fake_probe(monkeypatch, "bwrap cannot create its namespaces here: nope")
    assert again(tool, cache) == "bwrap cannot create its namespaces here: nope"
    assert again(tool, cache) == "bwrap cannot create its namespaces here: nope"
    assert probes.calls == 2
    assert not os.path.exists(cache._path(PROBE_NAME))
    probes.answer = BwrapFeatures(path=str(tool))  # the host gained it: noticed at once
    assert again(tool, cache) == BwrapFeatures(path=str(tool))


def test_a_changed_executable_is_probed_again(
    monkeypatch: pytest.MonkeyPatch, cache: ProbeCache, tool: Path
) -> None:
    probes = fake_probe(monkeypatch, BwrapFeatures(path=str(tool)))
    again(tool, cache)
    tool.write_text("#!/bin/sh\nexit 0\n# another build\n")  # size, mtime, ctime
    again(tool, cache)
    assert probes.calls == 2
    replacement = tool.with_name("new")
    shutil.copy2(tool, replacement)
    os.replace(replacement, tool)  # same content and mtime, another inode
    again(tool, cache)
    assert probes.calls == 3
    again(tool, cache)
    assert probes.calls == 3


def test_a_changed_host_is_probed_again(
    monkeypatch: pytest.MonkeyPatch, cache: ProbeCache, tool: Path
) -> None:
    probes = fake_probe(monkeypatch, BwrapFeatures(path=str(tool)))
    again(tool, cache)
    facts = host_facts.namespace_facts()
    for name, changed in (
        ("/proc/sys/user/max_user_namespaces", "0"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"),
        ("kernel", "7.0.0"),
        ("ns.user", "user:[1]"),
        ("status.Seccomp", "2"),
        ("uid", "1000:1000:1000"),
    ):
        changed_facts = {**facts, name: changed}
        monkeypatch.setattr(bwrap_probe, "namespace_facts", lambda f=changed_facts: f)
        again(tool, cache)
    assert probes.calls == 7


def test_a_changed_seccomp_program_or_trial_is_probed_again(
    monkeypatch: pytest.MonkeyPatch, cache: ProbeCache, tool: Path
) -> None:
    probes = fake_probe(monkeypatch, BwrapFeatures(path=str(tool)))
    again(tool, cache)
    monkeypatch.setattr(bwrap_probe, "seccomp_program", lambda: b"another program")
    again(tool, cache)
    assert probes.calls == 2


def test_a_missing_executable_is_probed_not_looked_up(
    monkeypatch: pytest.MonkeyPatch, cache: ProbeCache, tmp_path: Path
) -> None:
    probes = fake_probe(monkeypatch, "cannot run: missing")
    assert probe_key(str(tmp_path / "missing")) is None
    assert again(tmp_path / "missing", cache) == "cannot run: missing"
    assert probes.calls == 1


def test_the_real_probe_is_remembered(runner: HelperProcessRunner, cache: ProbeCache) -> None:
    backend = BubblewrapBackend(runner=runner, probe_cache=cache)
    require_available(backend)
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    key = probe_key(bwrap)
    assert key is not None
    assert cache.load(PROBE_NAME, key) is not None


def test_a_stale_success_fails_closed(
    runner: HelperProcessRunner, cache: ProbeCache, tmp_path: Path
) -> None:
    """A record that still matches while the host can no longer sandbox (something its key
    does not name changed): the backend runs bwrap as always, bwrap refuses, and the run is
    a `BackendFailed`; the command never starts."""
    require_available(BubblewrapBackend(runner=runner))
    broken = tmp_path / "bin" / "bwrap"
    broken.parent.mkdir()
    broken.write_text(
        "#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\n"
        "exit 1\n"
    )
    broken.chmod(0o755)
    key = probe_key(str(broken))
    assert key is not None
    cache.store(PROBE_NAME, key, {"version": [0, 8, 0], "landlock_abi": 0})
    backend = BubblewrapBackend(runner=runner, bwrap=str(broken), probe_cache=cache)
    assert not isinstance(backend.probe(), Failure)  # believed available
    workspace = tmp_path / "ws"
    workspace.mkdir()
    marker = workspace / "ran"
    request = RunRequest(argv=("touch", str(marker)), workspace=str(workspace))
    result = anyio.run(backend.run, request, Policy(limits=Limits(timeout_s=30)))
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), BackendFailed)
    assert "Creating new namespace failed" in result.failure().message
    assert not marker.exists()
