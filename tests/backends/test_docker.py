"""The docker backend against a real Docker engine (see oci_contract)."""

from __future__ import annotations

import pytest

from mechasandbox.backends.oci import DockerBackend
from tests.backends.oci_contract import OciContract

pytestmark = [pytest.mark.backend("docker"), pytest.mark.anyio]


class TestDocker(OciContract):
    backend_class = DockerBackend
    cli = "docker"
