"""The contract suite on the `process` and `none` backends."""

from __future__ import annotations

import pytest

from mechasandbox.backends.none import NoneBackend
from mechasandbox.backends.process import ProcessBackend
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
