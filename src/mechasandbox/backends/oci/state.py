"""What the docker and podman backends keep across runs, in one object a backend is given.

A backend built directly makes its own; a composition root makes one and hands it to both
engines' backends (and their warm pools), as a resource it closes on shutdown. Each part
releases what it holds outside the process when closed, and at the latest when the
interpreter exits (`weakref.finalize`, registered once it holds something).
"""

from __future__ import annotations

import attrs

from mechasandbox.backends.oci.engine_api import EngineApis
from mechasandbox.backends.oci.engine_loss import RunFiles
from mechasandbox.backends.oci.forwarders import ForwarderCache
from mechasandbox.backends.oci.lifeline import Sweeps
from mechasandbox.backends.oci.live import LiveContainers
from mechasandbox.backends.oci.portal import Portal
from mechasandbox.backends.oci.protection import WorkspacePlaceholders
from mechasandbox.backends.oci.seccomp_profile import SeccompProfiles


def _portal() -> Portal:
    return Portal("mechasandbox-oci")


def _live(state: EngineState) -> LiveContainers:
    return LiveContainers(state.portal)


@attrs.define(eq=False)
class EngineState:
    """`portal`: runs engine CLI calls for synchronous code (probes, removals on close);
    `live`: the containers of runs still going; `placeholders`: the placeholders they hold
    in their workspaces; `profiles`: the seccomp profile files; `forwarders`: what each
    image offers; `sweeps`: the engines whose leftovers were removed; `run_files`: where
    the engine CLI writes each run's container id; `apis`: each engine's API socket."""

    portal: Portal = attrs.field(factory=_portal)
    live: LiveContainers = attrs.field(default=attrs.Factory(_live, takes_self=True))
    placeholders: WorkspacePlaceholders = attrs.field(factory=WorkspacePlaceholders)
    profiles: SeccompProfiles = attrs.field(factory=SeccompProfiles)
    forwarders: ForwarderCache = attrs.field(factory=ForwarderCache)
    sweeps: Sweeps = attrs.field(factory=Sweeps)
    run_files: RunFiles = attrs.field(factory=RunFiles)
    apis: EngineApis = attrs.field(factory=EngineApis)

    def close(self) -> None:
        """Remove the live containers, then their placeholders (a placeholder goes only once
        no container has it mounted) and the profile files; stop the portal."""
        self.live.close()
        self.placeholders.close()
        self.profiles.close()
        self.run_files.close()
        self.portal.close()
