"""The warm pool on a real podman engine: ready sessions as its members (see
oci_pool_contract; `REUSE`, which needs keepers, is refused: test_podman_pool.py)."""

from __future__ import annotations

import pytest

from mechasandbox.backends.oci import PodmanBackend
from tests.backends.oci_pool_contract import OciPoolContract

pytestmark = [pytest.mark.backend("podman"), pytest.mark.anyio]


class TestPodmanPool(OciPoolContract):
    backend_class = PodmanBackend
    cli = "podman"
    keepers = False
