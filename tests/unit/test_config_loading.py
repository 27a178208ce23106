"""`load_policy`: each layer in order, who may widen, and bad files as ConfigInvalid."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from returns.pipeline import is_successful
from returns.result import Result

from mechasandbox.config import (
    DISCOVER,
    BackendSettings,
    LimitsSettings,
    NetworkSettings,
    ResolvedConfig,
    Settings,
    UserFile,
    default_user_file,
    load_policy,
)
from mechasandbox.config.files import MAX_CONFIG_BYTES
from mechasandbox.domain import GIB, MIB, ConfigInvalid, Enforcement, NetworkMode, Policy


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _load(
    workspace: Path,
    user_file: str | UserFile | None,
    extra_files: Sequence[str],
    overrides: Settings,
) -> Result[ResolvedConfig, ConfigInvalid]:
    return load_policy(
        workspace=str(workspace), user_file=user_file, extra_files=extra_files, overrides=overrides
    )


def loaded(
    workspace: Path,
    *,
    user_file: str | UserFile | None = None,
    extra_files: Sequence[str] = (),
    overrides: Settings = Settings(),  # noqa: B008
) -> ResolvedConfig:
    result = _load(workspace, user_file, extra_files, overrides)
    assert is_successful(result), result
    return result.unwrap()


def failed(
    workspace: Path,
    *,
    user_file: str | UserFile | None = None,
    extra_files: Sequence[str] = (),
    overrides: Settings = Settings(),  # noqa: B008
) -> ConfigInvalid:
    result = _load(workspace, user_file, extra_files, overrides)
    assert not is_successful(result), result
    return result.failure()


# Layers -------------------------------------------------------------------------------


def test_defaults_alone(workspace: Path) -> None:
    config = loaded(workspace)
    assert config.policy == Policy()
    assert config.backend == "auto"
    assert config.image is None
    assert config.runtime is None
    assert len(config.files) == 1
    assert config.files[0].endswith("default.toml")
    assert config.warnings == ()


def test_user_file_may_widen(workspace: Path, tmp_path: Path) -> None:
    user = write(
        tmp_path / "user.toml",
        """
        enforcement = "best-effort"
        [backend]
        name = "docker"
        image = "python:3.12"
        [network]
        mode = "full"
        [limits]
        memory = "16g"
        timeout = "unlimited"
        [filesystem]
        writable = ["/var/cache/build"]
        deny_read = []
        """,
    )
    config = loaded(workspace, user_file=user)
    assert config.policy.enforcement is Enforcement.BEST_EFFORT
    assert config.policy.network.mode is NetworkMode.FULL
    assert config.policy.limits.memory_bytes == 16 * GIB
    assert config.policy.limits.timeout_s is None
    assert config.policy.filesystem.writable == ("/var/cache/build",)
    assert config.policy.filesystem.deny_read == ()
    assert (config.backend, config.image) == ("docker", "python:3.12")
    assert config.files[1:] == (user,)


def test_project_file_narrows_the_user_policy(workspace: Path, tmp_path: Path) -> None:
    user = write(tmp_path / "user.toml", '[network]\nmode = "full"\n')
    project = write(
        workspace / ".mechasandbox.toml", '[network]\nmode = "none"\n[limits]\nmemory = "1g"\n'
    )
    config = loaded(workspace, user_file=user)
    assert config.policy.network.mode is NetworkMode.NONE
    assert config.policy.limits.memory_bytes == GIB
    assert config.files[1:] == (user, project)


def test_project_file_may_not_widen(workspace: Path) -> None:
    project = write(workspace / ".mechasandbox.toml", '[network]\nmode = "full"\n')
    error = failed(workspace)
    assert error.source == project
    assert error.field == "network.mode"
    assert "would widen the policy" in error.message
    assert error.message.startswith(f"{project}: network.mode: ")


def test_project_file_judged_against_the_user_file(workspace: Path, tmp_path: Path) -> None:
    user = write(tmp_path / "user.toml", '[limits]\nmemory = "16g"\n')
    write(workspace / ".mechasandbox.toml", '[limits]\nmemory = "8g"\n')
    assert loaded(workspace, user_file=user).policy.limits.memory_bytes == 8 * GIB
    assert failed(workspace).field == "limits.memory"  # without the user file, 8g > 4g


def test_config_files_may_widen_over_the_project(workspace: Path, tmp_path: Path) -> None:
    write(workspace / ".mechasandbox.toml", '[limits]\nmemory = "1g"\n')
    first = write(tmp_path / "a.toml", '[limits]\nmemory = "8g"\ntimeout = "10m"\n')
    second = write(tmp_path / "b.toml", '[limits]\nmemory = "6g"\n')
    config = loaded(workspace, extra_files=(first, second))
    assert config.policy.limits.memory_bytes == 6 * GIB
    assert config.policy.limits.timeout_s == 600.0
    assert config.files[-2:] == (first, second)


def test_overrides_come_last_and_may_widen(workspace: Path, tmp_path: Path) -> None:
    write(workspace / ".mechasandbox.toml", '[network]\nmode = "none"\n')
    config_file = write(tmp_path / "c.toml", '[limits]\nmemory = "8g"\n')
    overrides = Settings(
        backend=BackendSettings(name="process"),
        network=NetworkSettings(mode=NetworkMode.FULL),
        limits=LimitsSettings(memory=512 * MIB),
    )
    config = loaded(workspace, extra_files=(config_file,), overrides=overrides)
    assert config.policy.network.mode is NetworkMode.FULL
    assert config.policy.limits.memory_bytes == 512 * MIB
    assert config.backend == "process"


def test_bad_overrides_are_config_invalid(workspace: Path) -> None:
    error = failed(workspace, overrides=Settings(limits=LimitsSettings(memory=-1)))
    assert error.source == "<overrides>"
    assert error.field == "limits.memory"


def test_project_backend_fills_in_auto(workspace: Path) -> None:
    write(workspace / ".mechasandbox.toml", '[backend]\nname = "podman"\nimage = "alpine"\n')
    config = loaded(workspace)
    assert (config.backend, config.image) == ("podman", "alpine")


def test_project_backend_does_not_replace_the_users(workspace: Path, tmp_path: Path) -> None:
    user = write(tmp_path / "u.toml", '[backend]\nname = "bubblewrap"\n')
    write(workspace / ".mechasandbox.toml", '[backend]\nname = "docker"\n')
    config = loaded(workspace, user_file=user)
    assert config.backend == "bubblewrap"
    assert "ignored" in config.warnings[0]


def test_project_backend_none_is_refused(workspace: Path) -> None:
    write(workspace / ".mechasandbox.toml", '[backend]\nname = "none"\n')
    assert failed(workspace).field == "backend.name"


def test_discovered_user_file(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_user_file() == str(tmp_path / "xdg" / "mechasandbox" / "config.toml")
    assert loaded(workspace, user_file=DISCOVER).files[1:] == ()
    user = write(tmp_path / "xdg" / "mechasandbox" / "config.toml", "[limits]\nmax_processes = 9\n")
    config = loaded(workspace, user_file=DISCOVER)
    assert config.policy.limits.max_processes == 9
    assert config.files[1:] == (user,)


def test_default_user_file_falls_back_to_home() -> None:
    assert default_user_file({"HOME": "/h"}) == "/h/.config/mechasandbox/config.toml"


# Bad input ----------------------------------------------------------------------------


def test_missing_config_file(workspace: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    error = failed(workspace, extra_files=(missing,))
    assert (error.source, error.problem) == (missing, "file not found")


def test_missing_explicit_user_file(workspace: Path, tmp_path: Path) -> None:
    assert failed(workspace, user_file=str(tmp_path / "nope.toml")).problem == "file not found"


def test_config_file_that_is_a_directory(workspace: Path, tmp_path: Path) -> None:
    assert "directory" in failed(workspace, extra_files=(str(tmp_path),)).problem


def test_an_empty_directory_in_place_of_the_project_file_is_no_project_file(
    workspace: Path,
) -> None:
    """What a bubblewrap run of another process covers the missing `.mechasandbox.toml` with
    while it runs: a run started meanwhile reads no project file there, and fails on none.
    A directory with content is still an error."""
    (workspace / ".mechasandbox.toml").mkdir()
    assert loaded(workspace).policy == loaded(workspace, overrides=Settings()).policy
    assert [f for f in loaded(workspace).files if ".mechasandbox.toml" in f] == []
    (workspace / ".mechasandbox.toml" / "x").write_text("")
    assert "directory" in failed(workspace).problem


def test_toml_syntax_error_names_the_line(workspace: Path, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", '[limits]\nmemory = "1g"\ntimeout = \n')
    error = failed(workspace, extra_files=(bad,))
    assert error.source == bad
    assert error.field == "line 3, column 11"
    assert error.problem.startswith("invalid TOML")


def test_not_utf8(workspace: Path, tmp_path: Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe")
    assert "UTF-8" in failed(workspace, extra_files=(str(path),)).problem


def test_oversized_file(workspace: Path, tmp_path: Path) -> None:
    big = write(tmp_path / "big.toml", "#" * (MAX_CONFIG_BYTES + 1))
    assert "larger than" in failed(workspace, extra_files=(big,)).problem


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ('[network]\nmood = "none"\n', "network.mood", "unknown key"),
        ('[limits]\nmemory = "5 zettabytes"\n', "limits.memory", "invalid size '5 zettabytes'"),
        ("[limits]\nmemory = -5\n", "limits.memory", "positive"),
        ('[limits]\nmemory = "2t"\n', "limits.memory", "above the maximum 1t"),
        ('[limits]\ntimeout = "30d"\n', "limits.timeout", "unknown unit 'd'"),
        ('[limits]\ntimeout = "30000h"\n', "limits.timeout", "above the maximum 168h"),
        ("[limits]\nmax_processes = 10000000\n", "limits.max_processes", "above the maximum"),
        ('[backend]\nname = "chroot"\n', "backend.name", "unknown backend 'chroot'"),
        ('[filesystem]\nreadable = "/opt"\n', "filesystem.readable", "expected a list"),
        ('enforcement = "sometimes"\n', "enforcement", "unknown enforcement"),
    ],
)
def test_bad_values_name_file_and_key(
    workspace: Path, tmp_path: Path, text: str, field: str, fragment: str
) -> None:
    path = write(tmp_path / "c.toml", text)
    error = failed(workspace, extra_files=(path,))
    assert (error.source, error.field) == (path, field)
    assert fragment in error.problem


def test_bad_value_in_project_file(workspace: Path) -> None:
    project = write(workspace / ".mechasandbox.toml", '[limits]\nmemory = "lots"\n')
    error = failed(workspace)
    assert (error.source, error.field) == (project, "limits.memory")


def test_missing_workspace(tmp_path: Path) -> None:
    result = load_policy(workspace=str(tmp_path / "gone"), user_file=None)
    assert "not an existing directory" in result.failure().problem


def test_no_env_interpolation(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVIL", 'x"\n[network]\nmode = "full')
    path = write(tmp_path / "c.toml", '[environment]\nset = { A = "${EVIL}" }\n')
    config = loaded(workspace, extra_files=(path,))
    assert config.policy.environment.set == (("A", "${EVIL}"),)
    assert config.policy.network.mode is NetworkMode.NONE


def test_openagents_json_is_read(workspace: Path) -> None:
    path = write(
        workspace / ".openagents" / "project.json",
        json.dumps({"sandbox": {"enabled": True, "memoryLimit": "2g", "networkEnabled": False}}),
    )
    config = loaded(workspace)
    assert config.policy.limits.memory_bytes == 2 * GIB
    assert config.files[-1] == path
