"""The warm pool on a real Docker engine (see oci_pool_contract)."""

from __future__ import annotations

import pytest

from mechasandbox.backends.oci import DockerBackend
from tests.backends.oci_pool_contract import OciPoolContract

pytestmark = [pytest.mark.backend("docker"), pytest.mark.anyio]


class TestDockerPool(OciPoolContract):
    backend_class = DockerBackend
    cli = "docker"
