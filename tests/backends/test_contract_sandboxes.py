"""The shared backend contract on every sandboxing backend available here.

Each class skips with the reason when its backend is missing (or fails, where
MECHASANDBOX_REQUIRE_BACKENDS names it), so the same suite runs on laptops, in CI, and on
macOS runners.
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

from mechasandbox.backends.base import Backend
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.testing import BackendContract
from tests.conftest import require_available

TEST_IMAGE = os.environ.get("MECHASANDBOX_TEST_IMAGE", "mechasandbox-test:busybox")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backend")
macos_only = pytest.mark.skipif(sys.platform != "darwin", reason="macOS backend")


def available(backend: Backend) -> Backend:
    require_available(backend)
    return backend


@linux_only
class TestBubblewrapContract(BackendContract):
    @pytest.fixture
    def backend(self, runner: HelperProcessRunner) -> Backend:
        from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend

        return available(BubblewrapBackend(runner=runner))


@linux_only
class TestLandlockContract(BackendContract):
    @pytest.fixture
    def backend(self, runner: HelperProcessRunner) -> Backend:
        from mechasandbox.backends.linux.landlock import LandlockBackend

        return available(LandlockBackend(runner=runner))

    def test_workspace_writes_reach_the_host(
        self, backend: Backend, tmp_path: pathlib.Path
    ) -> None:
        """Landlock cannot take a right back below a granted directory, so to keep missing
        protected paths (`.envrc`, `.vscode/`) uncreatable the workspace's top level takes no
        new entries; existing directories are fully writable (docs/backends-landlock.md)."""
        (tmp_path / "src").mkdir()
        self.run(backend, ["sh", "-c", "echo hello > src/made.txt"], tmp_path).unwrap()
        made = tmp_path / "src" / "made.txt"
        assert made.read_text() == "hello\n"
        assert made.stat().st_uid == os.getuid()
        refused = self.run(backend, ["sh", "-c", "echo x > top.txt"], tmp_path).unwrap()
        assert refused.exit_code != 0
        assert not (tmp_path / "top.txt").exists()


@linux_only
class TestDockerContract(BackendContract):
    @pytest.fixture
    def backend(self, runner: HelperProcessRunner) -> Backend:
        from mechasandbox.backends.oci import DockerBackend

        return available(DockerBackend(runner=runner, image=TEST_IMAGE))


@linux_only
class TestPodmanContract(BackendContract):
    @pytest.fixture
    def backend(self, runner: HelperProcessRunner) -> Backend:
        from mechasandbox.backends.oci import PodmanBackend

        return available(PodmanBackend(runner=runner, image=TEST_IMAGE))


@macos_only
class TestSeatbeltContract(BackendContract):
    @pytest.fixture
    def backend(self, runner: HelperProcessRunner) -> Backend:
        from mechasandbox.backends.macos.seatbelt import SeatbeltBackend

        return available(SeatbeltBackend(runner=runner))
