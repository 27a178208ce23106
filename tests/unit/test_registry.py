"""Auto-selection: strongest backend that enforces the policy, never `none`."""

from __future__ import annotations

from pathlib import Path

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import check_enforcement
from mechasandbox.backends.catalog import AUTO_ORDER
from mechasandbox.backends.registry import AutoBackend, MissingBackend, choose
from mechasandbox.domain import (
    BackendUnavailable,
    Capabilities,
    Enforcement,
    Policy,
    Protection,
    RunResult,
)
from mechasandbox.sandbox import Sandbox
from mechasandbox.testing import ScriptedBackend


@attrs.define
class WeakBackend(ScriptedBackend):
    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        return Success(
            Capabilities(backend=self.name, enforced=frozenset({Protection.ENVIRONMENT}))
        )


def test_first_backend_that_enforces_wins() -> None:
    weak = WeakBackend(backend_name="weak")
    strong = ScriptedBackend(backend_name="strong")
    assert choose([weak, strong], Policy()).unwrap() is strong


def test_unavailable_backends_are_skipped() -> None:
    missing = MissingBackend(backend_name="bubblewrap", reason="bwrap not installed")
    strong = ScriptedBackend(backend_name="strong")
    assert choose([missing, strong], Policy()).unwrap() is strong


def test_strict_policy_with_only_weak_backends_is_refused() -> None:
    result = choose([WeakBackend(backend_name="weak")], Policy())
    assert isinstance(result, Failure)
    assert result.failure().kind == "policy_unsupported"


def test_best_effort_takes_the_strongest_available() -> None:
    weak = WeakBackend(backend_name="weak")
    policy = attrs.evolve(Policy(), enforcement=Enforcement.BEST_EFFORT)
    assert choose([MissingBackend(backend_name="x", reason="r"), weak], policy).unwrap() is weak


def test_nothing_available_names_every_reason() -> None:
    result = choose(
        [
            MissingBackend(backend_name="a", reason="ra"),
            MissingBackend(backend_name="b", reason="rb"),
        ],
        Policy(),
    )
    assert isinstance(result, Failure)
    assert "a: ra" in result.failure().message
    assert "b: rb" in result.failure().message


def test_none_is_never_a_candidate() -> None:
    assert "none" not in AUTO_ORDER


@attrs.define
class NotedBackend(ScriptedBackend):
    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        return Success(
            Capabilities(
                backend=self.name,
                enforced=frozenset(Protection),
                warnings=("a gap",),
                notes=("engine 1.0, image x",),
            )
        )


def test_results_carry_the_notes_of_the_backend_that_ran_them_once(tmp_path: Path) -> None:
    """Through `auto` and the facade alike; the capabilities' warnings are the backend's to
    attach (with the policy's gaps), its notes the facade's."""
    ran = RunResult(backend="noted", exit_code=0, signal=None, warnings=("a gap",))
    weak = WeakBackend(backend_name="weak")
    noted = NotedBackend(backend_name="noted", results=[Success(ran), Success(ran)])
    for backend in (AutoBackend(candidates=(weak, noted)), noted):
        finished = Sandbox(backend=backend, workspace=str(tmp_path)).run_sync(["true"]).unwrap()
        assert finished.notes == ("engine 1.0, image x",)
        assert finished.warnings == ("a gap",)


def test_notes_are_never_a_reason_to_refuse() -> None:
    capabilities = NotedBackend(backend_name="noted").probe().unwrap()
    assert check_enforcement(capabilities, Policy()).unwrap() == ("a gap",)
