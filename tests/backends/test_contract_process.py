"""The contract suite on the `process` and `none` backends."""

from __future__ import annotations

import pathlib

import pytest

from mechasandbox.backends.none import UNCONFINED_WARNING, NoneBackend
from mechasandbox.backends.process import ProcessBackend
from mechasandbox.domain import Policy
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.testing import BackendContract


class TestProcessContract(BackendContract):
    @pytest.fixture
    def backend(self, runner: HelperProcessRunner) -> ProcessBackend:
        return ProcessBackend(runner=runner)


class TestNoneContract(BackendContract):
    @pytest.fixture
    def backend(self, runner: HelperProcessRunner) -> NoneBackend:
        return NoneBackend(runner=runner)

    def test_cpu_limit(self) -> None:  # type: ignore[override]
        pytest.skip("`none` applies no resource limits by design")

    def test_strict_refuses_what_it_cannot_enforce(  # type: ignore[override]
        self, backend: NoneBackend, tmp_path: pathlib.Path
    ) -> None:
        """Naming `none` is the opt-in: it runs even under a strict policy, and says so."""
        finished = self.run(backend, ["true"], tmp_path, policy=Policy()).unwrap()
        assert UNCONFINED_WARNING in finished.warnings
        assert any("filesystem-read" in warning for warning in finished.warnings)
