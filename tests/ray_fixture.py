"""The session's Ray cluster (`mechasandbox.testing.ray_cluster`): two nodes, each in a
network namespace this fixture creates, and a driver in the head's. Started once for the
whole session by the first test that asks for it (a few seconds), stopped at its end.

Where it cannot start (not root, no Ray), the tests skip with the reason, unless
MECHASANDBOX_REQUIRE_BACKENDS names `ray` (CI's root run): then they fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mechasandbox.testing.ray_cluster import NetnsCluster
from tests.conftest import require_available, required_backends, skip_if_left_to_another_run


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[NetnsCluster]:
    skip_if_left_to_another_run("ray")
    reason = NetnsCluster.unavailable()
    if reason is not None:
        if "ray" in required_backends():
            pytest.fail(f"required backend 'ray' unavailable: {reason}")
        pytest.skip(f"backend 'ray' unavailable: {reason}")
    with NetnsCluster.running() as cluster:
        require_available(cluster.backend())
        yield cluster
