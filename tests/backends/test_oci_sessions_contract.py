"""The backend contract suite, every command of it run inside a docker or podman session
(one container per test's workspace and policy): what a one-shot run guarantees, a
session's command guarantees too."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from mechasandbox.backends.base import Backend
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.testing import BackendContract
from mechasandbox.testing.sessions import InSession
from tests.backends.test_oci_sessions import leftovers, make_backend

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux engines")


class _InContainerSessions(BackendContract):
    engine = ""

    @pytest.fixture
    def backend(self, runner: HelperProcessRunner) -> Iterator[Backend]:
        engine = make_backend(self.engine, runner)
        with InSession(engine) as in_session:
            yield in_session
        assert leftovers(engine.name) == []


class TestDockerSessionContract(_InContainerSessions):
    engine = "docker"


class TestPodmanSessionContract(_InContainerSessions):
    engine = "podman"
