"""`[ray]` in the configuration: the user's layers set it, a project file never does (it
would send the workspace to a cluster of its choosing)."""

from __future__ import annotations

import pathlib

from returns.result import Failure

from mechasandbox.backends.cluster.backend import RayBackend
from mechasandbox.backends.cluster.connection import NO_ADDRESS
from mechasandbox.config.loading import load_policy
from mechasandbox.config.schema import RaySettings
from mechasandbox.containers import Application

USER = """
[backend]
name = "ray"
[ray]
address = "10.0.0.1:6379"
backend = "bubblewrap"
max_transfer = "64m"
grace = "5s"
retries = 1
"""


def test_the_users_file_sets_ray(tmp_path: pathlib.Path) -> None:
    user = tmp_path / "user.toml"
    user.write_text(USER)
    resolved = load_policy(workspace=str(tmp_path), user_file=str(user)).unwrap()
    assert resolved.backend == "ray"
    assert resolved.ray == RaySettings(
        address="10.0.0.1:6379", backend="bubblewrap", max_transfer=64 << 20, grace=5.0, retries=1
    )


def test_a_project_file_neither_sets_ray_nor_chooses_it(tmp_path: pathlib.Path) -> None:
    (tmp_path / ".mechasandbox.toml").write_text(
        '[backend]\nname = "ray"\n[ray]\naddress = "203.0.113.9:6379"\n'
    )
    resolved = load_policy(workspace=str(tmp_path), user_file=None).unwrap()
    assert resolved.backend == "auto"
    assert resolved.ray == RaySettings()
    assert any("ray ignored" in warning for warning in resolved.warnings)
    assert any("backend.name = 'ray' ignored" in warning for warning in resolved.warnings)


def test_bad_values_are_named(tmp_path: pathlib.Path) -> None:
    user = tmp_path / "user.toml"
    user.write_text('[ray]\nbackend = "vm"\nretries = -1\nmax_transfer = "lots"\n')
    result = load_policy(workspace=str(tmp_path), user_file=str(user))
    assert isinstance(result, Failure)
    message = result.failure().message
    assert "ray.backend" in message
    assert "ray.retries" in message
    assert "ray.max_transfer" in message


def test_the_root_builds_ray_from_the_settings(tmp_path: pathlib.Path) -> None:
    """Without an address (and no connection of this process) the backend is unavailable,
    saying what to set, before Ray is even imported."""
    app = Application.from_config(workspace=str(tmp_path), user_file=None).unwrap()
    try:
        backend = app.backends.named("ray")
        assert isinstance(backend, RayBackend)
        probed = backend.probe()
        assert isinstance(probed, Failure)
        assert probed.failure().reason == NO_ADDRESS
    finally:
        app.shutdown_resources()
