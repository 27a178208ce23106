"""The backend contract suite, every command of it run inside a docker or podman session
(one container per test's workspace and policy): what a one-shot run guarantees, a
session's command guarantees too."""

from __future__ import annotations

import pathlib
import secrets
import sys
from collections.abc import Iterator

import attrs
import pytest
from returns.result import Failure

from mechasandbox.backends.base import Backend
from mechasandbox.domain.errors import Timeout
from mechasandbox.domain.limits import Limits
from mechasandbox.runner.escapers import ESCAPERS, escaper_script
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


class TestGvisorSessionContract(_InContainerSessions):
    engine = "docker-runsc"

    def test_timeout_kills_the_whole_tree(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        """As the contract's, seen from inside: gVisor's processes are not the host's (its
        sentry runs them), so the escapers are looked for by the session's next command."""
        marker = f"contract-{secrets.token_hex(4)}"
        # gVisor starts processes slowly under load: the escapers are waited for (their
        # sleeps seen, at most 3 s) before they are listed, or the count below is a race
        waited = (
            'i=0; while [ "$(ps -o args | grep -c "^[s]leep 30")" -lt '
            f"{ESCAPERS} ] && [ $i -lt 60 ]; do sleep 0.05; i=$((i+1)); done; "
        )
        script = escaper_script(marker, then=waited + "echo started; ps -o args; wait")
        policy = attrs.evolve(self.policy(), limits=Limits(timeout_s=5))
        result = self.run(backend, ["sh", "-c", script], tmp_path, policy=policy)
        assert isinstance(result, Failure)
        error = result.failure()
        assert isinstance(error, Timeout)
        assert error.partial.stdout.startswith(b"started\n")
        assert error.partial.stdout.count(marker.encode()) >= ESCAPERS  # (else: vacuous)
        after = self.run(backend, ["ps", "-o", "args"], tmp_path, policy=policy).unwrap()
        assert marker.encode() not in after.stdout
