"""The contract suite over the `ray` backend: every run goes from this process to the
cluster's driver (in a network namespace), to a node, under that node's own backend."""

from __future__ import annotations

import os
import pathlib
import time

import attrs
import pytest
from returns.result import Failure

from mechasandbox.domain.errors import Timeout
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.request import StreamedInput
from mechasandbox.testing import BackendContract
from mechasandbox.testing.ray_cluster import DriverBackend, NetnsCluster

pytestmark = pytest.mark.ray


class TestRayContract(BackendContract):
    @pytest.fixture
    def backend(self, ray_cluster: NetnsCluster) -> DriverBackend:
        return ray_cluster.backend()

    def test_echo_and_exit_code(  # type: ignore[override]
        self, backend: DriverBackend, tmp_path: pathlib.Path, ray_cluster: NetnsCluster
    ) -> None:
        """The node's result unchanged: its backend's name, and the node that ran it."""
        result = self.run(backend, ["sh", "-c", "echo out; echo err >&2; exit 7"], tmp_path)
        finished = result.unwrap()
        assert (finished.stdout, finished.stderr, finished.exit_code) == (b"out\n", b"err\n", 7)
        assert finished.backend == "bubblewrap"  # `auto` on the nodes
        assert finished.node in {node["node_id"] for node in ray_cluster.nodes()}

    def test_stdin_that_never_ends_does_not_hold_the_run(  # type: ignore[override]
        self, backend: DriverBackend, tmp_path: pathlib.Path
    ) -> None:
        """A node cannot read the caller's descriptor: the input is read whole first, so
        one that never ends holds the run until its timeout, and it is a `Timeout`."""
        read_end, write_end = os.pipe()
        policy = attrs.evolve(self.policy(), limits=Limits(timeout_s=1.0))
        try:
            started = time.monotonic()
            result = self.run(
                backend, ["true"], tmp_path, policy=policy, stdin=StreamedInput(read_end)
            )
            elapsed = time.monotonic() - started
        finally:
            os.close(write_end)
            os.close(read_end)
        assert isinstance(result, Failure)
        assert isinstance(result.failure(), Timeout)
        assert elapsed < 5.0
