"""A warm pool of pre-started containers: commands run in them instead of by `run`.

Runs go to ready sessions where the runner can start the session agent: a member is then a
session container, its command run by the agent, which kills the command's whole tree
before the run returns; the session is closed after that one command (the default,
`after_use=DISCARD`) or handed to the next command of its key (`after_use=REUSE`: its files
carry over, never its processes; see `container_pool`). What follows describes keepers, the
members otherwise (`DISCARD` only: `REUSE` needs the agent, `REUSE_NEEDS_AGENT`).

`PooledBackend(backend=DockerBackend(...), settings=PoolSettings(size=2))` satisfies the
`Backend` protocol. Containers are kept per key: (engine CLI, image, runtime, the creation
arguments compiled from the policy, the workspace), so a command only ever lands in a
container created with its own policy's mounts and limits (the readable, writable and masked
paths as the host showed them when the command came: see `policy_mounts`). Each one runs a
long-lived keeper under `--init`, which waits on its lifeline (see `lifeline`: the container
stops with this process); a command is `exec --user UID:GID --workdir WS --env-file
/dev/fd/3 CONTAINER ARGV` (the environment on a descriptor, see `env_file`), so the
container's cgroup limits (memory, pids, cpus) and ulimits apply to it, and orphans it
leaves are reaped by the init.

After use a container is discarded (removed in the background, a fresh one started to
replace it) unless `after_use=AfterUse.REUSE`: a command can leave state behind (files in
/tmp, background processes), which the next command of the same key would then see.
`docker exec` cannot kill what it started: on a timeout or a cancellation the whole
container is force-removed before `run` returns, and replaced.

A maintenance loop (anyio's blocking portal, on a thread of its own: `portal`) starts
replacements, removes used containers, and stops containers idle for longer than
`idle_timeout_s`. `close()` removes everything. A process that exits without it stops the
maintenance and, like any run's, the backend's `EngineState` removes the containers;
`reap_leftovers` covers pool containers (they carry the same labels as every other
container of ours).

Sessions (`open_session`) come from a pool of their own, ready sessions opened ahead per
workspace, policy and settings (`session_pool`), `size` of each.
"""

from __future__ import annotations

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext, LaunchPlan
from mechasandbox.backends.execute import prepare_run
from mechasandbox.backends.oci import lifeline
from mechasandbox.backends.oci.compiler import EngineKind, Runtime
from mechasandbox.backends.oci.container_pool import ContainerPool
from mechasandbox.backends.oci.engine import OciBackend
from mechasandbox.backends.oci.policy_mounts import PolicyMounts, survey
from mechasandbox.backends.oci.pool_settings import (
    GVISOR_UNSUPPORTED,
    PODMAN_UNSUPPORTED,
    POOLED_ALLOWLIST,
    REUSE_NEEDS_AGENT,
    AfterUse,
    PoolSettings,
)
from mechasandbox.backends.oci.session_pool import WarmSessions
from mechasandbox.backends.session_base import BackendSession, SessionSettings
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult


@attrs.frozen(kw_only=True)
class PooledBackend:
    """A docker/podman backend whose commands run in warm containers (see the module)."""

    backend: OciBackend
    settings: PoolSettings = PoolSettings()
    _pool: ContainerPool = attrs.field(init=False, eq=False, repr=False)
    _sessions: WarmSessions = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_pool", ContainerPool(self.backend, self.settings))
        sessions = WarmSessions(
            self.backend, size=self.settings.size, idle_timeout_s=self.settings.idle_timeout_s
        )
        object.__setattr__(self, "_sessions", sessions)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def pool(self) -> ContainerPool:
        return self._pool

    @property
    def sessions(self) -> WarmSessions:
        return self._sessions

    async def open_session(
        self, workspace: str, policy: Policy, settings: SessionSettings
    ) -> Result[BackendSession, SandboxError]:
        """A session opened ahead for these, if one is ready (see `session_pool`)."""
        return await self._sessions.open_session(workspace, policy, settings)

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        if self.settings.after_use is AfterUse.REUSE and not self._pool.sessions:
            return Failure(BackendUnavailable(backend=self.name, reason=REUSE_NEEDS_AGENT))
        if self.backend.kind == "podman" and not self._pool.sessions:
            # Its members would be keepers (REUSE, or no session agent), which podman's
            # `run --detach` cannot keep; ready sessions serve it (their CLIs stay attached).
            return Failure(BackendUnavailable(backend=self.name, reason=PODMAN_UNSUPPORTED))
        if self.backend.runtime is Runtime.RUNSC:
            return Failure(BackendUnavailable(backend=self.name, reason=GVISOR_UNSUPPORTED))
        settings = self.settings
        note = (
            f"warm pool: {settings.size} container(s) per key, after use: "
            f"{settings.after_use.value}"
        )
        return self.backend.probe().map(
            lambda caps: attrs.evolve(
                caps,
                enforced=caps.enforced - {Protection.NETWORK_ALLOWLIST},
                details=(
                    *(d for d in caps.details if d[0] is not Protection.NETWORK_ALLOWLIST),
                    (Protection.NETWORK_ALLOWLIST, POOLED_ALLOWLIST),
                ),
                notes=(*caps.notes, note),
            )
        )

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        settings = self.settings
        if policy.network.mode is NetworkMode.ALLOWLIST:  # not bridged: no network at all
            policy = attrs.evolve(
                policy, network=attrs.evolve(policy.network, mode=NetworkMode.NONE)
            )
        return self.backend.plan(request, policy, host).map(
            lambda plan: attrs.evolve(
                plan,
                sections=(
                    *plan.sections,
                    (
                        "pool",
                        f"size {settings.size}, after use {settings.after_use.value}, "
                        f"when exhausted {settings.when_exhausted.value}: the container is "
                        "created as above, ahead, running the session agent (one command, "
                        "then it is closed; for reuse, handed to the next command of its "
                        "key) or, without the agent, a keeper (discard only); the command "
                        "then runs through the agent, or by `exec`",
                    ),
                ),
            )
        )

    def warm(self, request: RunRequest, policy: Policy) -> Result[None, SandboxError]:
        """Pre-start the pool for the request's workspace and this policy."""
        prepared = prepare_run(self, request, policy, self.backend.git)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        _warnings, workspace, protected, files = prepared.unwrap()
        mounts: Result[PolicyMounts, SandboxError] = survey(workspace, protected, self.backend.host)
        if isinstance(mounts, Failure):
            return Failure(mounts.failure())
        self._pool.warm(self._pool.slot(request, protected, workspace, mounts.unwrap(), files))
        return Success(None)

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        engine = self.backend._engine()
        if isinstance(engine, Failure):
            return await self._run(request, policy)  # (prepare_run reports it)
        key = (self.backend.kind, engine.unwrap()[2])
        return await lifeline.sweep_beside(
            self.backend.state.sweeps,
            key,
            self.backend.reap_leftovers,
            lambda: self._run(request, policy),
            concurrently=engine.unwrap()[1].traits.kind is not EngineKind.PODMAN,
        )

    async def _run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        prepared = self.backend._prepare(request, policy, probed=self)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        ready = prepared.unwrap()
        return await self._pool.run(
            request,
            ready.policy,
            ready.workspace,
            ready.warnings,
            ready.mounts,
            ready.file_placeholders,
        )

    async def reap_leftovers(
        self, *, include_live: bool = False
    ) -> Result[tuple[str, ...], SandboxError]:
        return await self.backend.reap_leftovers(include_live=include_live)

    def close(self) -> None:
        self._sessions.close()
        self._pool.close()
