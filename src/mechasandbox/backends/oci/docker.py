"""The `docker` backend: an OCI container on a Docker engine (local, remote, or Desktop)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from mechasandbox.backends.oci.compiler import EngineTraits
from mechasandbox.backends.oci.engine import OciBackend
from mechasandbox.backends.oci.probe import EngineInfo

# How runsc must be registered with dockerd: without its own `--network=none`, gVisor
# refuses to start on some hosts ("cannot run with network enabled in root network
# namespace") even though the container has `--network none`; without `--oci-seccomp` it
# ignores the container's seccomp profile (a command could chmod 4755 a file of the
# workspace), and docker has no per-run way to say it.
RUNSC_HINT = (
    'register runsc with dockerd as {"runtimes": {"runsc": {"path": "/usr/bin/runsc", '
    '"runtimeArgs": ["--network=none", "--oci-seccomp"]}}} in its daemon.json'
)


def _has_network_none(arguments: list[str]) -> bool:
    joined = " ".join(arguments)
    return "--network=none" in joined or "--network none" in joined


def _has_oci_seccomp(arguments: list[str]) -> bool:
    return any(arg in ("--oci-seccomp", "--oci-seccomp=true", "-oci-seccomp") for arg in arguments)


@attrs.frozen(kw_only=True)
class DockerBackend(OciBackend):
    """`DockerBackend(runner=..., image=..., runtime=Runtime.RUNSC, executable="docker")`."""

    kind: ClassVar[str] = "docker"
    info_args: ClassVar[tuple[str, ...]] = ("info", "--format", "{{json .}}")

    def _default_traits(self) -> EngineTraits:
        return EngineTraits.docker()

    def _parse_info(self, document: Any) -> EngineInfo | str:
        errors = document.get("ServerErrors")
        if errors:
            return "engine not reachable: " + "; ".join(str(e) for e in errors)
        if document.get("OSType") not in (None, "linux"):
            return f"the engine runs {document.get('OSType')} containers, not linux"
        runtimes: dict[str, Any] = document.get("Runtimes") or {}
        runsc_problem = None
        warnings: list[str] = []
        notes: list[str] = []
        runsc_args = list((runtimes.get("runsc") or {}).get("runtimeArgs") or [])
        if "runsc" in runtimes and not _has_network_none(runsc_args):
            notes.append("runsc is registered without --network=none; if it fails: " + RUNSC_HINT)
        if "runsc" in runtimes and not _has_oci_seccomp(runsc_args):
            runsc_problem = (
                "runsc is registered without --oci-seccomp: gVisor would ignore the "
                "container's seccomp profile (setuid files could be made in the workspace); "
                + RUNSC_HINT
            )
        if not document.get("MemoryLimit", True):
            warnings.append("the engine reports no memory limit support")
        return EngineInfo(
            version=str(document.get("ServerVersion", "unknown")),
            runtimes=frozenset(runtimes),
            traits=EngineTraits.docker(),
            memory=bool(document.get("MemoryLimit", True)),
            pids=bool(document.get("PidsLimit", True)),
            runsc_problem=runsc_problem,
            warnings=tuple(warnings),
            notes=tuple(notes),
        )
