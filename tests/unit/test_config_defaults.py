"""The packaged defaults file and the example file both describe exactly `Policy()`."""

from __future__ import annotations

import hashlib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import pytest

from mechasandbox.config import (
    BackendChoice,
    Settings,
    apply_settings,
    layers,
    load_policy,
    loading,
    structure_settings,
)
from mechasandbox.config.overlay import apply_backend
from mechasandbox.domain import NetworkMode, Policy

REPO = Path(__file__).resolve().parents[2]


def _policy_of(text: str, source: str) -> tuple[Policy, BackendChoice]:
    settings = structure_settings(tomllib.loads(text), source).unwrap()
    # Laid over an arbitrary policy, not Policy(): every key must be present in the file.
    other = apply_settings(
        Policy(), structure_settings({"limits": {"memory": "1m"}}, "x").unwrap(), "x"
    ).unwrap()
    return apply_settings(other, settings, source).unwrap(), apply_backend(
        BackendChoice(), settings.backend
    )


def test_packaged_defaults_equal_the_domain_defaults() -> None:
    text = resources.files("mechasandbox").joinpath("defaults/default.toml").read_text()
    policy, backend = _policy_of(text, "defaults")
    assert policy == Policy()
    assert backend == BackendChoice()


def test_packaged_defaults_set_every_key() -> None:
    text = resources.files("mechasandbox").joinpath("defaults/default.toml").read_text()
    settings = structure_settings(tomllib.loads(text), "defaults").unwrap()
    for section in ("filesystem", "network", "limits", "environment"):
        values = getattr(settings, section)
        missing = [f.name for f in attrs.fields(type(values)) if getattr(values, f.name) is None]
        assert missing == [], section
    assert settings.enforcement is not None
    assert settings.backend.name is not None


def test_example_file_equals_the_domain_defaults() -> None:
    policy, backend = _policy_of((REPO / "config" / "default.toml").read_text(), "example")
    assert policy == Policy()
    assert backend == BackendChoice()


def test_the_known_digest_is_the_packaged_files() -> None:
    """With no other layer, `load_policy` answers without parsing while the packaged file
    has this digest. After editing the file (and the tests above still passing), put the
    digest this test prints into `loading.DEFAULTS_DIGEST`."""
    content = Path(loading.DEFAULTS_FILE).read_bytes()
    assert content == resources.files("mechasandbox").joinpath("defaults/default.toml").read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    assert digest == loading.DEFAULTS_DIGEST, f"DEFAULTS_DIGEST = {digest!r}"


def test_the_shortcut_answers_what_the_layers_answer(tmp_path: Path) -> None:
    quick = load_policy(workspace=str(tmp_path), user_file=None)
    assert quick.unwrap() == layers.resolve(str(tmp_path), None, (), None).unwrap()


@pytest.mark.parametrize(
    "layer",
    [".mechasandbox.toml", ".openagents/project.json", "user", "config", "overrides"],
)
def test_any_other_layer_takes_the_layers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, layer: str
) -> None:
    calls: list[str] = []
    real = layers.resolve

    def counted(*args: Any) -> Any:
        calls.append(layer)
        return real(*args)

    monkeypatch.setattr(layers, "resolve", counted)
    user: str | None = None
    extra: tuple[str, ...] = ()
    overrides = None
    if layer == "user":
        user = str(tmp_path / "user.toml")
        Path(user).write_text("")
    elif layer == "config":
        extra = (str(tmp_path / "extra.toml"),)
        Path(extra[0]).write_text("")
    elif layer == "overrides":
        overrides = Settings()
    else:
        (tmp_path / layer).parent.mkdir(exist_ok=True)
        (tmp_path / layer).write_text("{}" if layer.endswith(".json") else "")
    load_policy(workspace=str(tmp_path), user_file=user, extra_files=extra, overrides=overrides)
    assert calls == [layer]


def test_an_edited_defaults_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    edited = tmp_path / "default.toml"
    text = Path(loading.DEFAULTS_FILE).read_text()
    edited.write_text(text.replace('mode = "none"', 'mode = "full"'))
    monkeypatch.setattr(loading, "DEFAULTS_FILE", str(edited))
    workspace = tmp_path / "ws"
    workspace.mkdir()
    config = load_policy(workspace=str(workspace), user_file=None).unwrap()
    assert config.policy.network.mode is NetworkMode.FULL
    assert config.files == (str(edited),)
