"""The `podman` backend: the same compiler and run contract as docker, podman's quirks.

Differences handled here and in `EngineTraits.podman`: podman's `--init` needs catatonit
(we point `--init-path` at a static tini where catatonit is missing); rootful podman
raises RLIMIT_NPROC unless told (we set it); runtime flags go per run
(`--runtime-flag network=none` for gVisor); rootless podman maps the user's uid with
`--userns keep-id`. `podman info` has its own JSON shape.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, ClassVar

import attrs

from mechasandbox.backends.oci.compiler import EngineTraits
from mechasandbox.backends.oci.engine import OciBackend
from mechasandbox.backends.oci.probe import EngineInfo

CATATONIT_PATHS = (
    "/usr/libexec/podman/catatonit",
    "/usr/local/libexec/podman/catatonit",
    "/usr/lib/podman/catatonit",
)
# Statically linked inits that work in any image when bind-mounted as PID 1.
STATIC_INIT_PATHS = ("/usr/bin/tini-static", "/usr/bin/docker-init", "/sbin/tini-static")
KNOWN_RUNTIMES = ("runc", "crun", "runsc", "kata-runtime")


def find_init() -> tuple[bool, str | None]:
    """(usable, --init-path): catatonit where podman expects it, else a static tini."""
    if any(os.path.exists(path) for path in CATATONIT_PATHS):
        return True, None
    for path in STATIC_INIT_PATHS:
        if os.path.exists(path):
            return True, os.path.realpath(path)
    return False, None


@attrs.frozen(kw_only=True)
class PodmanBackend(OciBackend):
    """`PodmanBackend(runner=..., image=..., runtime=Runtime.RUNSC, executable="podman")`."""

    kind: ClassVar[str] = "podman"
    info_args: ClassVar[tuple[str, ...]] = ("info", "--format", "json")
    label_template: ClassVar[str] = '{{{{index .Labels "{key}"}}}}'

    def _default_traits(self) -> EngineTraits:
        init, init_path = find_init()
        return EngineTraits.podman(init=init, init_path=init_path, rootless=os.getuid() != 0)

    def _parse_info(self, document: Any) -> EngineInfo | str:
        host = document["host"]
        rootless = bool(host.get("security", {}).get("rootless", False))
        controllers = set(host.get("cgroupControllers") or [])
        path = dict(self.host.env).get("PATH", os.defpath)
        runtimes = {str(host.get("ociRuntime", {}).get("name", "runc"))}
        runtimes |= {
            name for name in KNOWN_RUNTIMES if shutil.which(name, path=path + ":/usr/sbin:/sbin")
        }
        init, init_path = find_init()
        warnings: list[str] = []
        notes: list[str] = []
        if not init:
            notes.append("no catatonit or static tini: the command runs as PID 1 (no --init)")
        if "memory" not in controllers:
            warnings.append("podman cannot use the memory cgroup here (rootless on cgroup v1?)")
        if "pids" not in controllers:
            warnings.append("podman cannot use the pids cgroup here")
        return EngineInfo(
            version=str(document.get("version", {}).get("Version", "unknown")),
            runtimes=frozenset(runtimes),
            traits=EngineTraits.podman(init=init, init_path=init_path, rootless=rootless),
            memory="memory" in controllers,
            pids="pids" in controllers,
            warnings=tuple(warnings),
            notes=tuple(notes),
        )
