"""The `docker` backend: an OCI container on a Docker engine (local, remote, or Desktop)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from mechasandbox.backends.oci.compiler import EngineTraits
from mechasandbox.backends.oci.engine import EngineInfo, OciBackend

# How runsc must be registered with dockerd: without its own `--network=none`, gVisor
# refuses to start on some hosts ("cannot run with network enabled in root network
# namespace") even though the container has `--network none`.
RUNSC_HINT = (
    'register runsc with dockerd as {"runtimes": {"runsc": {"path": "/usr/bin/runsc", '
    '"runtimeArgs": ["--network=none"]}}} (see scripts/ci-engines.sh)'
)


def _has_network_none(arguments: list[str]) -> bool:
    joined = " ".join(arguments)
    return "--network=none" in joined or "--network none" in joined


@attrs.frozen(kw_only=True)
class DockerBackend(OciBackend):
    """`DockerBackend(runner=..., image=..., runtime=Runtime.RUNSC, executable="docker")`."""

    kind: ClassVar[str] = "docker"

    def _info_args(self) -> tuple[str, ...]:
        return ("info", "--format", "{{json .}}")

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
        if "runsc" in runtimes and not _has_network_none(
            list(runtimes["runsc"].get("runtimeArgs") or [])
        ):
            warnings.append(
                "runsc is registered without --network=none; if it fails: " + RUNSC_HINT
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
        )
