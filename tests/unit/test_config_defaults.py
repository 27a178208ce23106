"""The packaged defaults file and the example file both describe exactly `Policy()`."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import attrs

from mechasandbox.config import BackendChoice, apply_settings, structure_settings
from mechasandbox.config.overlay import apply_backend
from mechasandbox.domain import Policy

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
