"""The warm pool on a real podman engine: ready sessions as its members, for discard and
reuse runs (see oci_pool_contract; keepers are refused: test_podman_pool.py)."""

from __future__ import annotations

import pytest

from mechasandbox.backends.oci import PodmanBackend
from tests.backends.oci_pool_contract import OciPoolContract

pytestmark = [pytest.mark.backend("podman"), pytest.mark.anyio]


class TestPodmanPool(OciPoolContract):
    backend_class = PodmanBackend
    cli = "podman"
    keepers = False
