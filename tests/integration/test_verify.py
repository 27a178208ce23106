"""`doctor --verify`: its checks detect a real escape (on `process`) and see protections hold
(on bubblewrap), so a "held" is never a check that could not have failed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mechasandbox.backends.base import Backend
from mechasandbox.backends.process import ProcessBackend
from mechasandbox.cli.attacks import (
    ENV_SECRET_NAME,
    Arena,
    launcher_loader,
    leave_setuid_file,
    plant_environment_secret,
    read_denied_in_workspace,
)
from mechasandbox.cli.verify import ATTACKS, attempt, verify_backend
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available

HOSTILE_PROJECT = (
    "read outside and plant a git hook through a hostile project file and a planted symlink"
)
ESCAPES_ON_PROCESS = {
    "read a secret outside the workspace (directly and via a planted symlink)",
    "read a denied file inside the workspace (deny_read)",
    "write outside the workspace",
    "plant a git hook (directly and by renaming .git)",
    "write .git/config after a host `git config` replaced it during the run",
    "redirect git to planted hooks (.git/commondir, .git/modules)",
    HOSTILE_PROJECT,
    "plant what git's settings lead to (core.hooksPath, an include, a nested repository)",
    "make a repository whose settings run a command on the host",
    "kill a host process",
    "connect to a loopback TCP server of the host",
    "reach the host's loader through the policy's variables (LD_*, DYLD_*)",
    "reach a host unix socket with full network",
    "leave a setuid/setgid file in the workspace",
}
KERNEL_SETTINGS = "write kernel settings (/proc/sys; the value they have)"


@pytest.fixture(autouse=True)
def _planted_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SECRET_NAME, raising=False)
    plant_environment_secret()
    monkeypatch.setenv(ENV_SECRET_NAME, os.environ[ENV_SECRET_NAME])  # undone after the test


CLAIMED_BY_PROCESS = {
    "read a host API key from the environment",
    "leave a setsid/nohup process running after the run",
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_checks_catch_the_escapes_of_an_unconfined_backend(runner: HelperProcessRunner) -> None:
    """Made even where not claimed (`attempt`), every check sees the escape it looks for."""
    backend = ProcessBackend(runner=runner)
    verdicts = {attack.title: attempt(attack, backend) for attack in ATTACKS}
    for title in ESCAPES_ON_PROCESS:
        assert verdicts[title] is False, title
    # A sysctl file is root's to write: unconfined, root writes the host's settings, and an
    # ordinary user cannot.
    assert verdicts[KERNEL_SETTINGS] is (os.geteuid() != 0)
    # What `process` does enforce is seen to hold:
    for title in CLAIMED_BY_PROCESS:
        assert verdicts[title] is True, title


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_verify_attacks_only_what_a_backend_claims(runner: HelperProcessRunner) -> None:
    """`process` claims no file system, network or pid protection: those checks say "not
    claimed" with the backend's own reason, never FAILED; the claimed ones held."""
    checks = verify_backend(ProcessBackend(runner=runner))
    assert {c["attack"] for c in checks} == {attack.title for attack in ATTACKS}
    outcomes = {c["attack"]: c["outcome"] for c in checks}
    for title, outcome in outcomes.items():
        if title in CLAIMED_BY_PROCESS:
            assert outcome == "held", (title, outcome)
        else:
            assert outcome.startswith("not claimed ("), (title, outcome)
    assert outcomes["kill a host process"] == (
        "not claimed (pid-isolation: host processes can be signalled and traced)"
    )
    protections = {c["attack"]: c["protections"] for c in checks}
    assert protections["write outside the workspace"] == ["filesystem-write"]
    assert protections[HOSTILE_PROJECT] == ["filesystem-read", "protected-paths"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux-only")
def test_every_check_holds_on_bubblewrap(runner: HelperProcessRunner) -> None:
    from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend

    backend = BubblewrapBackend(runner=runner)
    require_available(backend)
    checks = verify_backend(backend)
    outcomes = {c["attack"]: c["outcome"] for c in checks}
    assert set(outcomes.values()) == {"held"}, outcomes  # every one claimed, and held
    assert all(c["protections"] for c in checks)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="landlock is Linux-only")
def test_a_host_rewrite_of_git_config_holds_on_landlock(runner: HelperProcessRunner) -> None:
    """Landlock's rules hold on to inodes: the replaced file is as read-only as the old one
    (where bubblewrap stops the run instead)."""
    from mechasandbox.backends.linux.landlock import LandlockBackend

    backend = LandlockBackend(runner=runner)
    require_available(backend)
    outcomes = {c["attack"]: c["outcome"] for c in verify_backend(backend)}
    title = "write .git/config after a host `git config` replaced it during the run"
    assert outcomes[title] == "held", outcomes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="landlock is Linux-only")
def test_hostile_projects_and_host_unix_sockets_hold_on_landlock(
    runner: HelperProcessRunner,
) -> None:
    from mechasandbox.backends.linux.landlock import LandlockBackend

    backend = LandlockBackend(runner=runner)
    require_available(backend)
    outcomes = {c["attack"]: c["outcome"] for c in verify_backend(backend)}
    assert outcomes[HOSTILE_PROJECT] == "held", outcomes
    assert outcomes["reach a host unix socket with full network"] == "held", outcomes


def _other_backend(name: str, runner: HelperProcessRunner) -> Backend:
    if name == "landlock":
        from mechasandbox.backends.linux.landlock import LandlockBackend

        return LandlockBackend(runner=runner)
    from mechasandbox.backends.oci import DockerBackend, PodmanBackend

    engine = DockerBackend if name == "docker" else PodmanBackend
    image = os.environ.get("MECHASANDBOX_TEST_IMAGE", "mechasandbox-test:busybox")
    return engine(runner=runner, image=image)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("landlock", marks=pytest.mark.backend("landlock")),
        pytest.param("docker", marks=pytest.mark.backend("docker")),
        pytest.param("podman", marks=pytest.mark.backend("podman")),
    ],
)
def test_the_loader_check_holds_where_no_launcher_gets_the_commands_variables(
    name: str, runner: HelperProcessRunner, tmp_path: Path
) -> None:
    """landlock execs the command itself (its loader runs confined); docker and podman run
    their CLI with an environment of its own (`cli_environment`)."""
    backend = _other_backend(name, runner)
    require_available(backend)
    arena = Arena(workspace=tmp_path / "workspace", outside=tmp_path / "outside")
    arena.workspace.mkdir()
    arena.outside.mkdir()
    assert launcher_loader(backend, arena) is True


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_a_setuid_file_and_a_denied_file_hold_in_a_container(
    runner: HelperProcessRunner, tmp_path: Path, engine: str
) -> None:
    """A container started by root made `chmod 4755` files root's on the host."""
    from mechasandbox.backends.oci import DockerBackend, PodmanBackend
    from tests.backends.oci_contract import TEST_IMAGE

    backend_class = DockerBackend if engine == "docker" else PodmanBackend
    backend = backend_class(runner=runner, image=TEST_IMAGE)
    require_available(backend)
    arena = Arena(workspace=tmp_path / "workspace", outside=tmp_path / "outside")
    arena.workspace.mkdir()
    arena.outside.mkdir()
    assert leave_setuid_file(backend, arena) is True
    assert read_denied_in_workspace(backend, arena) is True
