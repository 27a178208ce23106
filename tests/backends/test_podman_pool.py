"""The warm pool on real podman (see oci_pool_contract)."""

from __future__ import annotations

import pytest

from mechasandbox.backends.oci import PodmanBackend
from tests.backends.oci_pool_contract import OciPoolContract

pytestmark = [pytest.mark.backend("podman"), pytest.mark.anyio]


class TestPodmanPool(OciPoolContract):
    backend_class = PodmanBackend
    cli = "podman"
