"""The podman backend against real podman (see oci_contract)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from returns.result import Success

from mechasandbox.backends.oci import OciBackend, PodmanBackend
from mechasandbox.backends.oci.podman import CATATONIT_PATHS, STATIC_INIT_PATHS
from mechasandbox.backends.oci.probe import EngineInfo
from mechasandbox.domain import MIB, Enforcement, MemoryLimit, RunRequest, SpawnFailed
from mechasandbox.runner.runner import HelperProcessRunner
from tests.backends.oci_contract import OciContract, failed, ok, policy
from tests.conftest import require_available, skip_if_left_to_another_run

pytestmark = [pytest.mark.backend("podman"), pytest.mark.anyio]


class TestPodman(OciContract):
    backend_class = PodmanBackend
    cli = "podman"

    async def test_memory_bomb_is_memory_limit(self, backend: OciBackend, tmp_path: Path) -> None:
        """Podman 4.3 on cgroup v1 reports OOMKilled=false when the kernel kills a child
        of the container's init: the bomb is stopped (SIGKILL) but not named as such."""
        request = RunRequest(
            argv=["sh", "-c", "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived"],
            workspace=str(tmp_path),
        )
        result = await backend.run(request, policy(memory_bytes=48 * MIB))
        if isinstance(result, Success):
            assert result.unwrap().signal == signal.SIGKILL
            assert b"survived" not in result.unwrap().stdout
        else:
            assert isinstance(result.failure(), MemoryLimit)
        assert self.leftovers() == []


def _init_binary(name: str) -> str | None:
    """A static init podman can bind-mount as PID 1: catatonit (podman's own), or tini."""
    if name == "catatonit":
        candidates = [os.environ.get("MECHASANDBOX_TEST_CATATONIT", ""), *CATATONIT_PATHS]
        candidates.append(shutil.which("catatonit") or "")
    else:
        candidates = list(STATIC_INIT_PATHS)
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


@pytest.fixture(scope="module")
def shell_less_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An image without /bin/sh (a static busybox, `echo` only): its containers are not
    tied by the watcher, their PID 1 is podman's `--init`."""
    skip_if_left_to_another_run("podman")
    busybox = shutil.which("busybox")
    if shutil.which("podman") is None or busybox is None:
        pytest.skip("needs podman and a static busybox (busybox-static)")
    root = tmp_path_factory.mktemp("shell-less")
    (root / "bin").mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    (root / "bin" / "echo").symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_text("not a program\n")
    name = f"mechasandbox-test-shell-less:{secrets.token_hex(4)}"
    archive = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True)
    subprocess.run(
        ["podman", "import", "-", name], input=archive.stdout, capture_output=True, check=True
    )
    yield name
    subprocess.run(["podman", "rmi", "--force", name], capture_output=True, check=False)


@pytest.mark.parametrize("init", ["catatonit", "tini"])
@pytest.mark.parametrize(
    ("command", "status"), [("no-such-command", 127), ("/bin", 126), ("/etc/motd", 126)]
)
async def test_a_command_podmans_init_cannot_exec_is_spawn_failed(
    runner: HelperProcessRunner,
    shell_less_image: str,
    tmp_path: Path,
    init: str,
    command: str,
    status: int,
) -> None:
    """Without a watcher, podman's init execs the command: catatonit said `ERROR
    (catatonit:6): failed to exec pid1: No such file or directory` and exited 1, which
    came back as the command's own status 1. Like tini's report and the other backends:
    `spawn_failed` with 127 (not found) or 126 (not executable)."""
    path = _init_binary(init)
    if path is None:
        pytest.skip(f"no {init} binary here (MECHASANDBOX_TEST_CATATONIT names one)")

    @attrs.frozen(kw_only=True)
    class WithInit(PodmanBackend):
        def _parse_info(self, document: Any) -> EngineInfo | str:
            info = super()._parse_info(document)
            if isinstance(info, str):
                return info
            return attrs.evolve(info, traits=attrs.evolve(info.traits, init=True, init_path=path))

    backend = WithInit(runner=runner, image=shell_less_image)
    require_available(backend)
    best_effort = attrs.evolve(policy(), enforcement=Enforcement.BEST_EFFORT)
    request = RunRequest(argv=[command, "x"], workspace=str(tmp_path))
    error = failed(await backend.run(request, best_effort))
    assert isinstance(error, SpawnFailed), error
    assert error.exit_status == status, error
    echoed = ok(
        await backend.run(RunRequest(argv=["echo", "hi"], workspace=str(tmp_path)), best_effort)
    )
    assert echoed.stdout == b"hi\n"
