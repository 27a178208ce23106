"""Pure values: limits validation, required protections, enforcement, environment, rlimits."""

from __future__ import annotations

import attrs
import pytest
from returns.result import Failure, Success

from mechasandbox.backends.base import check_enforcement, scrubbed_environment
from mechasandbox.domain import (
    GIB,
    Capabilities,
    Enforcement,
    EnvironmentPolicy,
    Limits,
    NetworkMode,
    NetworkPolicy,
    Policy,
    Protection,
    RunRequest,
    required_protections,
)
from mechasandbox.limits.rlimits import rlimits_for


@pytest.mark.parametrize(
    "field", ["timeout_s", "cpu_time_s", "memory_bytes", "max_processes", "max_open_files"]
)
@pytest.mark.parametrize("value", [0, -1, -0.5])
def test_limits_reject_non_positive(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Limits(**{field: value})  # type: ignore[arg-type]


def test_limits_reject_absurd_values() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        Limits(memory_bytes=10**16)
    with pytest.raises(TypeError):
        Limits(max_processes=True)


def test_default_policy_is_secure() -> None:
    policy = Policy()
    assert policy.network.mode is NetworkMode.NONE
    assert policy.enforcement is Enforcement.STRICT
    assert "~/.ssh" in policy.filesystem.deny_read
    assert ".git/hooks" in policy.filesystem.protected
    assert policy.limits.timeout_s is not None
    assert "PATH" in policy.environment.allow
    assert not any("KEY" in name or "TOKEN" in name for name in policy.environment.allow)


def test_required_protections_follow_the_policy() -> None:
    required = required_protections(Policy())
    assert {
        Protection.FILESYSTEM_READ,
        Protection.NETWORK_NONE,
        Protection.PID_ISOLATION,
    } <= required
    full = attrs.evolve(Policy(), network=NetworkPolicy(mode=NetworkMode.FULL))
    assert Protection.NETWORK_NONE not in required_protections(full)
    allow = attrs.evolve(Policy(), network=NetworkPolicy(mode=NetworkMode.ALLOWLIST))
    assert Protection.NETWORK_ALLOWLIST in required_protections(allow)
    no_cpu = attrs.evolve(Policy(), limits=Limits(cpu_time_s=None))
    assert Protection.CPU not in required_protections(no_cpu)


def test_strict_refuses_and_best_effort_warns() -> None:
    caps = Capabilities(
        backend="weak",
        enforced=frozenset({Protection.ENVIRONMENT}),
        details=((Protection.NETWORK_NONE, "no network namespace"),),
    )
    refused = check_enforcement(caps, Policy())
    assert isinstance(refused, Failure)
    assert Protection.NETWORK_NONE in refused.failure().missing
    assert "network-none" in refused.failure().message
    warned = check_enforcement(caps, attrs.evolve(Policy(), enforcement=Enforcement.BEST_EFFORT))
    assert isinstance(warned, Success)
    assert any("network-none (no network namespace)" in w for w in warned.unwrap())
    full = Capabilities(backend="strong", enforced=frozenset(Protection))
    assert check_enforcement(full, Policy()) == Success(())


def test_environment_is_scrubbed() -> None:
    host = {
        "PATH": "/bin",
        "OPENAI_API_KEY": "sk-x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "LANG": "C",
        "PASSME": "1",
    }
    env = scrubbed_environment(
        EnvironmentPolicy(pass_through=("PASSME",), set=(("NEW", "v"),)), host
    )
    assert env == {"PATH": "/bin", "LANG": "C", "PASSME": "1", "NEW": "v"}


def test_request_rejects_shell_strings_and_empty_argv() -> None:
    with pytest.raises(TypeError):
        RunRequest(argv="rm -rf /", workspace="/tmp")
    with pytest.raises(ValueError, match="command"):
        RunRequest(argv=[], workspace="/tmp")


def test_rlimit_applier_is_pure_and_complete() -> None:
    limits = Limits(
        cpu_time_s=2.5,
        memory_bytes=GIB,
        max_processes=64,
        max_open_files=256,
        max_file_size_bytes=1000,
    )
    settings = {s.resource: (s.soft, s.hard) for s in rlimits_for(limits)}
    assert settings == {
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_CPU": (3, 4),
        "RLIMIT_AS": (GIB, GIB),
        "RLIMIT_NPROC": (64, 64),
        "RLIMIT_NOFILE": (256, 256),
        "RLIMIT_FSIZE": (1000, 1000),
    }
    by_cgroup = {
        s.resource for s in rlimits_for(limits, memory_by_rlimit=False, processes_by_rlimit=False)
    }
    assert "RLIMIT_AS" not in by_cgroup
    assert "RLIMIT_NPROC" not in by_cgroup
    assert rlimits_for(limits) == rlimits_for(limits)
