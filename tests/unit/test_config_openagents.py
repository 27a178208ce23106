"""The `sandbox` block of `.openagents/project.json`: mapping, narrowing, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from returns.pipeline import is_successful

from mechasandbox.config import ResolvedConfig, load_policy
from mechasandbox.domain import GIB, ConfigInvalid, NetworkMode

# The example from the OpenAgents sandbox design, with a memory limit within our default.
SEED = {
    "version": 1,
    "projectId": "openagents",
    "defaultBranch": "main",
    "testCommands": ["bun test"],
    "allowPush": True,
    "sandbox": {
        "enabled": True,
        "backend": "apple-container",
        "image": "mechacoder:latest",
        "memoryLimit": "4g",
        "networkEnabled": False,
    },
}


def project_json(workspace: Path, document: object) -> str:
    path = workspace / ".openagents" / "project.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return str(path)


def user_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "user.toml"
    path.write_text(text)
    return str(path)


def load(workspace: Path, user_file: str | None = None) -> ResolvedConfig:
    result = load_policy(workspace=str(workspace), user_file=user_file)
    assert is_successful(result), result
    return result.unwrap()


def refuse(workspace: Path, user_file: str | None = None) -> ConfigInvalid:
    result = load_policy(workspace=str(workspace), user_file=user_file)
    assert not is_successful(result), result
    return result.failure()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


def block(**sandbox: Any) -> dict[str, Any]:
    return {"version": 1, "sandbox": sandbox}


def test_seed_example_maps_onto_the_policy(workspace: Path) -> None:
    path = project_json(workspace, SEED)
    config = load(workspace)
    assert config.backend == "apple-container"
    assert config.image == "mechacoder:latest"
    assert config.policy.limits.memory_bytes == 4 * GIB
    assert config.policy.network.mode is NetworkMode.NONE
    assert config.files[-1] == path


def test_network_disabled_narrows_a_full_user_policy(workspace: Path, tmp_path: Path) -> None:
    user = user_toml(tmp_path, '[network]\nmode = "full"\n')
    project_json(workspace, block(networkEnabled=False))
    assert load(workspace, user).policy.network.mode is NetworkMode.NONE


def test_network_enabled_only_keeps_what_the_user_allows(workspace: Path, tmp_path: Path) -> None:
    project_json(workspace, block(networkEnabled=True))
    config = load(workspace)
    assert config.policy.network.mode is NetworkMode.NONE
    assert "networkEnabled is true" in config.warnings[0]

    user = user_toml(tmp_path, '[network]\nmode = "full"\n')
    config = load(workspace, user)
    assert config.policy.network.mode is NetworkMode.FULL
    assert config.warnings == ()


def test_memory_limit_above_the_user_policy_is_a_widening(workspace: Path) -> None:
    path = project_json(workspace, block(memoryLimit="8g"))
    error = refuse(workspace)
    assert (error.source, error.field) == (path, "sandbox.memoryLimit")
    assert "would widen the policy" in error.problem


def test_memory_limit_within_a_larger_user_limit(workspace: Path, tmp_path: Path) -> None:
    user = user_toml(tmp_path, '[limits]\nmemory = "16g"\n')
    project_json(workspace, block(memoryLimit="8g"))
    assert load(workspace, user).policy.limits.memory_bytes == 8 * GIB


def test_disabled_block_is_ignored_but_noted(workspace: Path) -> None:
    path = project_json(workspace, block(enabled=False, backend="none", memoryLimit="64g"))
    config = load(workspace)
    assert config.backend == "auto"
    assert config.policy.limits.memory_bytes == 4 * GIB
    assert "enabled is false" in config.warnings[0]
    assert config.files[-1] == path


def test_no_sandbox_block(workspace: Path) -> None:
    project_json(workspace, {"version": 1, "projectId": "x"})
    assert load(workspace).policy.limits.memory_bytes == 4 * GIB


def test_backend_none_is_refused(workspace: Path) -> None:
    project_json(workspace, block(backend="none"))
    assert refuse(workspace).field == "sandbox.backend"


def test_our_own_keys_in_the_block(workspace: Path) -> None:
    project_json(
        workspace,
        block(limits={"timeout": "30s"}, filesystem={"deny_write": ["/srv"]}, enforcement="strict"),
    )
    config = load(workspace)
    assert config.policy.limits.timeout_s == 30.0
    assert config.policy.filesystem.deny_write == ("/srv",)


def test_our_own_keys_still_narrow_only(workspace: Path) -> None:
    project_json(workspace, block(network={"mode": "full"}))
    assert refuse(workspace).field == "sandbox.network.mode"


@pytest.mark.parametrize(
    ("document", "field", "fragment"),
    [
        (block(memoryLimit="lots"), "sandbox.memoryLimit", "invalid size 'lots'"),
        (block(backend="vm"), "sandbox.backend", "unknown backend 'vm'"),
        (block(enabled="yes"), "sandbox.enabled", "true or false"),
        (block(networkEnabled="no"), "sandbox.networkEnabled", "true or false"),
        (block(image=3), "sandbox.image", "string"),
        (block(cpuLimit=2), "sandbox.cpuLimit", "unknown key"),
        (block(limits={"memroy": "1g"}), "sandbox.limits.memroy", "unknown key"),
        (
            block(memoryLimit="1g", limits={"memory": "1g"}),
            "sandbox.memoryLimit",
            "conflicts with sandbox.limits.memory",
        ),
        ({"sandbox": ["enabled"]}, "sandbox", "expected an object"),
    ],
)
def test_bad_block(workspace: Path, document: object, field: str, fragment: str) -> None:
    path = project_json(workspace, document)
    error = refuse(workspace)
    assert (error.source, error.field) == (path, field)
    assert fragment in error.problem


def test_not_an_object(workspace: Path) -> None:
    project_json(workspace, [1, 2])
    assert "JSON object" in refuse(workspace).problem


def test_json_syntax_error_names_the_line(workspace: Path) -> None:
    path = workspace / ".openagents" / "project.json"
    path.parent.mkdir()
    path.write_text('{\n  "sandbox": {\n    "enabled": tru\n  }\n}\n')
    error = refuse(workspace)
    assert error.source == str(path)
    assert error.field == "line 3, column 16"
    assert error.problem.startswith("invalid JSON")


def test_an_unknown_key_lists_the_openagents_keys(workspace: Path) -> None:
    path = project_json(workspace, block(memoryLimt="1g"))
    error = refuse(workspace)
    assert (error.source, error.field) == (path, "sandbox.memoryLimt")
    assert error.problem == (
        "unknown key; expected one of: enabled, backend, image, memoryLimit, networkEnabled, "
        "filesystem, network, limits, environment, enforcement, host_processes "
        "(did you mean 'memoryLimit'?)"
    )


def test_every_unknown_key_at_once(workspace: Path) -> None:
    project_json(workspace, block(memoryLimt="1g", netwrkEnabled=False))
    error = refuse(workspace)
    assert [error.field, *(more.field for more in error.more)] == [
        "sandbox.memoryLimt",
        "sandbox.netwrkEnabled",
    ]
    assert "did you mean 'networkEnabled'?" in error.message


def test_every_widening_at_once(workspace: Path) -> None:
    path = project_json(
        workspace,
        block(memoryLimit="8g", limits={"timeout": "1h"}, enforcement="best-effort"),
    )
    error = refuse(workspace)
    fields = [error.field, *(more.field for more in error.more)]
    assert fields == ["sandbox.limits.timeout", "sandbox.memoryLimit", "sandbox.enforcement"]
    assert error.message.startswith(f"{path}: sandbox.limits.timeout: would widen the policy")
    assert "; sandbox.memoryLimit: would widen the policy: 8g is above the inherited 4g" in (
        error.message
    )
    assert error.message.count(path) == 1
    assert error.message.count("a project file may only narrow") == 1


def test_the_project_that_chose_the_backend_is_remembered(workspace: Path) -> None:
    path = project_json(workspace, SEED)
    assert load(workspace).backend_chosen_by == f"{path}: sandbox.backend"
    project_json(workspace, block(backend={"name": "docker"}))
    assert load(workspace).backend_chosen_by == f"{path}: sandbox.backend.name"
    project_json(workspace, block(memoryLimit="1g"))
    assert load(workspace).backend_chosen_by is None
