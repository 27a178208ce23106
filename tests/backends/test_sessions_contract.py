"""The backend contract suite, every command of it run inside a session (one per test's
workspace): what a one-shot run guarantees, a session's command guarantees too."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator

import pytest

from mechasandbox.backends.base import Backend
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.testing import BackendContract
from mechasandbox.testing.sessions import InSession
from tests.conftest import require_available, require_session_agent

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backend")


@linux_only
class TestBubblewrapSessionContract(BackendContract):
    @pytest.fixture
    def backend(self, runner: HelperProcessRunner) -> Iterator[Backend]:
        from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend

        require_session_agent()
        bubblewrap = BubblewrapBackend(runner=runner)
        require_available(bubblewrap)
        with InSession(bubblewrap) as in_session:
            yield in_session


@linux_only
class TestLandlockSessionContract(BackendContract):
    @pytest.fixture
    def backend(self, runner: HelperProcessRunner) -> Iterator[Backend]:
        from mechasandbox.backends.linux.landlock import LandlockBackend

        require_session_agent()
        landlock = LandlockBackend(runner=runner)
        require_available(landlock)
        with InSession(landlock) as in_session:
            yield in_session

    def test_workspace_writes_reach_the_host(
        self, backend: Backend, tmp_path: pathlib.Path
    ) -> None:
        """As the one-shot landlock contract: the workspace's top level takes no new
        entries (docs/backends-landlock.md)."""
        (tmp_path / "src").mkdir()
        self.run(backend, ["sh", "-c", "echo hello > src/made.txt"], tmp_path).unwrap()
        assert (tmp_path / "src" / "made.txt").read_text() == "hello\n"
        refused = self.run(backend, ["sh", "-c", "echo x > top.txt"], tmp_path).unwrap()
        assert refused.exit_code != 0
