"""The session's Ray cluster (`mechasandbox.testing.ray_cluster`): two nodes, each in a
network namespace this fixture creates, and a driver in the head's. Started by the first
test that asks for it (about 20 s, the nodes' probes included), shared by the tests marked
`ray` that follow, and stopped as soon as the next test is not one of them, so that
other tests never run beside an idle cluster (its processes take memory and wake up). The
tests marked `ray` run last, together (in the order collected), so that it starts once.

Where it cannot start (not root, no Ray), the tests skip with the reason, unless
MECHASANDBOX_REQUIRE_BACKENDS names `ray` (CI's root run): then they fail."""

from __future__ import annotations

import contextlib

import pytest

from mechasandbox.testing.ray_cluster import NetnsCluster
from tests.conftest import require_available, required_backends, skip_if_left_to_another_run

_RUNNING = contextlib.ExitStack()
_CLUSTER: list[NetnsCluster] = []


@pytest.fixture
def ray_cluster() -> NetnsCluster:
    skip_if_left_to_another_run("ray")
    reason = NetnsCluster.unavailable()
    if reason is not None:
        if "ray" in required_backends():
            pytest.fail(f"required backend 'ray' unavailable: {reason}")
        pytest.skip(f"backend 'ray' unavailable: {reason}")
    if not _CLUSTER:
        _CLUSTER.append(_RUNNING.enter_context(NetnsCluster.running()))
        require_available(_CLUSTER[0].backend())
    return _CLUSTER[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items[:] = [i for i in items if not i.get_closest_marker("ray")] + [
        i for i in items if i.get_closest_marker("ray")
    ]


def pytest_sessionfinish() -> None:
    """However the session ends (interrupted too), nothing of the cluster is left."""
    _CLUSTER.clear()
    _RUNNING.close()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if _CLUSTER and (nextitem is None or nextitem.get_closest_marker("ray") is None):
        _CLUSTER.clear()
        _RUNNING.close()
