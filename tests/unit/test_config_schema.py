"""Structuring one layer: accepted spellings, and every bad input as ConfigInvalid with its key."""

from __future__ import annotations

from typing import Any

import pytest
from returns.pipeline import is_successful

from mechasandbox.config import (
    UNLIMITED,
    Settings,
    structure_settings,
)
from mechasandbox.domain import ConfigInvalid, Enforcement, NetworkMode


def ok(data: dict[str, Any]) -> Settings:
    result = structure_settings(data, "f.toml")
    assert is_successful(result), result
    return result.unwrap()


def bad(data: object) -> ConfigInvalid:
    result = structure_settings(data, "f.toml")  # type: ignore[arg-type]
    assert not is_successful(result), result
    error = result.failure()
    assert error.source == "f.toml"
    return error


def test_empty_layer_sets_nothing() -> None:
    assert ok({}) == Settings()


def test_every_section_structures() -> None:
    settings = ok(
        {
            "backend": {"name": "apple-container", "image": "img:1", "runtime": "runsc"},
            "filesystem": {
                "readable": ["/opt/sdk", "~/.cache/pip"],
                "writable": ["/tmp/out"],
                "deny_read": ["~/.ssh"],
                "deny_write": ["/etc"],
                "protected": [".git/hooks", "/abs/too"],
            },
            "network": {"mode": "allowlist", "allow": ["*.github.com", "pypi.org:443"]},
            "limits": {
                "timeout": "2m",
                "cpu_time": 30,
                "memory": "512m",
                "max_processes": 64,
                "max_open_files": "unlimited",
                "max_file_size": 1048576,
                "max_output": "1m",
            },
            "environment": {"allow": ["PATH"], "pass": ["HOME"], "set": {"CI": "1"}},
            "enforcement": "best-effort",
        }
    )
    assert settings.backend.name == "apple-container"
    assert settings.backend.runtime == "runsc"
    assert settings.filesystem.readable == ("/opt/sdk", "~/.cache/pip")
    assert settings.network.mode is NetworkMode.ALLOWLIST
    assert settings.network.allow == ("*.github.com", "pypi.org:443")
    assert settings.limits.timeout == 120.0
    assert settings.limits.cpu_time == 30.0
    assert settings.limits.memory == 512 * 1024**2
    assert settings.limits.max_open_files is UNLIMITED
    assert settings.limits.max_output == 1024**2
    assert settings.environment.pass_ == ("HOME",)
    assert settings.environment.set == (("CI", "1"),)
    assert settings.enforcement is Enforcement.BEST_EFFORT


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"network": {"mood": "none"}}, "network.mood", "unknown key"),
        ({"netwrok": {}}, "netwrok", "unknown key"),
        ({"limits": {"memory": "5 zettabytes"}}, "limits.memory", "invalid size '5 zettabytes'"),
        ({"limits": {"memory": -1}}, "limits.memory", "positive"),
        ({"limits": {"memory": 0}}, "limits.memory", "greater than zero"),
        ({"limits": {"memory": 1.5}}, "limits.memory", "whole number"),
        ({"limits": {"memory": True}}, "limits.memory", "boolean"),
        ({"limits": {"timeout": "forever"}}, "limits.timeout", "invalid duration 'forever'"),
        ({"limits": {"timeout": "-3s"}}, "limits.timeout", "positive"),
        ({"limits": {"cpu_time": "nan"}}, "limits.cpu_time", "invalid duration 'nan'"),
        ({"limits": {"max_processes": -4}}, "limits.max_processes", "greater than zero"),
        ({"limits": {"max_processes": "many"}}, "limits.max_processes", "whole number"),
        ({"limits": {"max_output": "unlimited"}}, "limits.max_output", "cannot be unlimited"),
        ({"limits": 5}, "limits", "expected a table"),
        ({"backend": {"name": "firejail"}}, "backend.name", "unknown backend 'firejail'"),
        ({"backend": {"name": 3}}, "backend.name", "unknown backend 3"),
        ({"backend": {"image": ""}}, "backend.image", "non-empty"),
        ({"network": {"mode": "some"}}, "network.mode", "unknown network mode 'some'"),
        ({"network": {"allow": "github.com"}}, "network.allow", "expected a list"),
        ({"network": {"allow": ["git hub.com"]}}, "network.allow", "whitespace"),
        ({"filesystem": {"readable": ["relative/dir"]}}, "filesystem.readable", "relative"),
        ({"filesystem": {"writable": [1]}}, "filesystem.writable", "as a string"),
        ({"filesystem": {"deny_read": ["/a\0b"]}}, "filesystem.deny_read", "NUL"),
        ({"environment": {"allow": ["BAD-NAME"]}}, "environment.allow", "not a valid"),
        ({"environment": {"pass_": ["HOME"]}}, "environment.pass_", "unknown key"),
        ({"environment": {"set": {"A": 1}}}, "environment.set", "string value"),
        ({"environment": {"set": ["A=1"]}}, "environment.set", "table"),
        ({"enforcement": "lenient"}, "enforcement", "unknown enforcement 'lenient'"),
        ({"filesystem": {"toolchains": "some"}}, "filesystem.toolchains", '"auto", "none"'),
        ({"filesystem": {"toolchains": ["rel"]}}, "filesystem.toolchains", "relative"),
        ({"filesystem": {"umask": "0888"}}, "filesystem.umask", "octal"),
        ({"filesystem": {"umask": 0o1000}}, "filesystem.umask", "octal"),
        ({"filesystem": {"umask": True}}, "filesystem.umask", "octal"),
    ],
)
def test_bad_input_names_the_key(data: dict[str, Any], field: str, fragment: str) -> None:
    error = bad(data)
    assert error.field == field
    assert fragment in error.problem
    assert error.message.startswith(f"f.toml: {field}: ")


def test_unknown_key_lists_the_accepted_ones() -> None:
    assert "mode, allow, deny" in bad({"network": {"mood": "none"}}).problem


def test_several_problems_are_all_reported() -> None:
    error = bad({"limits": {"memory": "x", "timeout": "y"}})
    assert [(error.field, error.source)] + [(p.field, p.source) for p in error.more] == [
        ("limits.timeout", "f.toml"),
        ("limits.memory", "f.toml"),
    ]
    assert error.message.startswith("f.toml: limits.timeout: invalid duration 'y'")
    assert "; limits.memory: invalid size 'x'" in error.message
    assert error.message.count("f.toml") == 1


def test_no_env_interpolation() -> None:
    settings = ok({"environment": {"set": {"TOKEN": "${HOME}"}}})
    assert settings.environment.set == (("TOKEN", "${HOME}"),)


def test_huge_list_is_refused() -> None:
    error = bad({"network": {"allow": ["a.example"] * 5000}})
    assert error.field == "network.allow"
    assert "too many entries" in error.problem


@pytest.mark.parametrize(
    ("written", "toolchains"),
    [("auto", ("auto",)), ("none", ()), (["auto", "~/sdk"], ("auto", "~/sdk")), ([], ())],
)
def test_toolchains_spellings(written: object, toolchains: tuple[str, ...]) -> None:
    assert ok({"filesystem": {"toolchains": written}}).filesystem.toolchains == toolchains


@pytest.mark.parametrize(
    ("written", "umask"), [("022", 0o022), ("0o077", 0o077), (0o027, 0o027), ("0", 0)]
)
def test_umask_spellings(written: object, umask: int) -> None:
    """Octal text, or TOML's own octal number (`umask = 0o027`)."""
    assert ok({"filesystem": {"umask": written}}).filesystem.umask == umask
