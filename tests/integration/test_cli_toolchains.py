"""`policy` and `doctor` list the toolchains a run makes readable, and the umask."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from mechasandbox.backends.toolchains import TOOLCHAINS
from mechasandbox.cli.main import main


@pytest.fixture
def developer(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A home with cargo (and its registry token) and a tool on PATH; a workspace."""
    home = tmp_path / "home"
    (home / ".cargo/bin").mkdir(parents=True)
    (home / ".cargo/credentials.toml").write_text("token\n")
    tool = home / "tools/bin/mytool"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    for toolchain in TOOLCHAINS:  # the developer's own (`PYENV_ROOT`...) are elsewhere
        for name, _relative in toolchain.variables:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", f"{home}/.cargo/bin:{tool.parent}:/usr/bin:/bin")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return workspace


def _policy(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["policy", "--json", *argv]) == 0
    shown: dict[str, object] = json.loads(capsys.readouterr().out)
    return shown


@pytest.mark.backend("bubblewrap")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux-only")
def test_policy_lists_the_toolchains_found_for_the_command(
    capsys: pytest.CaptureFixture[str], developer: pathlib.Path
) -> None:
    home = developer.parent / "home"
    shown = _policy(
        capsys, "--backend", "bubblewrap", "--workspace", str(developer), "--", "mytool"
    )
    assert shown["toolchains"] == {
        "applied": True,
        "readable": [str(home / ".cargo"), str(home / "tools")],
        "denied": [str(home / ".cargo/credentials"), str(home / ".cargo/credentials.toml")],
        "variables": ["CARGO_HOME"],
    }
    policy = shown["policy"]
    assert isinstance(policy, dict)
    assert policy["filesystem"]["toolchains"] == ["auto"]
    assert policy["filesystem"]["umask"] == "022"
    assert f"--ro-bind {home}/.cargo {home}/.cargo" in shown["sections"]["bwrap"]  # type: ignore[index]
    assert main(["policy", "--backend", "bubblewrap", "--workspace", str(developer)]) == 0
    text = capsys.readouterr().out
    assert f"## toolchains found (read-only for this run)\nreadable: {home}/.cargo\n" in text


@pytest.mark.backend("process")
def test_a_backend_that_hides_nothing_applies_none(
    capsys: pytest.CaptureFixture[str], developer: pathlib.Path
) -> None:
    shown = _policy(capsys, "--backend", "process", "--workspace", str(developer), "--", "true")
    toolchains = shown["toolchains"]
    assert isinstance(toolchains, dict)
    assert toolchains["applied"] is False


def test_doctor_lists_the_toolchains(
    capsys: pytest.CaptureFixture[str], developer: pathlib.Path
) -> None:
    home = developer.parent / "home"
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["toolchains"]["readable"] == [str(home / ".cargo")]
