"""What docker and podman share: the backend that runs one container per command.

Everything is driven through the engine's CLI (`cli`). The container is run with a name
and without `--rm`, so that after it ends we can ask the engine whether it was OOM-killed
or never started, and then remove it ourselves (`live`). The probe's findings are in
`probe`, what the image offers the bridge in `forwarders`, how protected paths are covered
in `protection`.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, ClassVar

import anyio
import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import Backend, HostContext, LaunchPlan, check_workspace
from mechasandbox.backends.execute import disarm_after, prepare_run, run_started
from mechasandbox.backends.git_facts import GitFacts
from mechasandbox.backends.oci import engine_loss, forwarders, lifeline, live, protection
from mechasandbox.backends.oci.cli import (
    Deadline,
    EngineCli,
    cli_environment,
    find_executable,
    owner_id,
    tail,
    unreachable,
)
from mechasandbox.backends.oci.compiler import (
    LABEL_OWNER,
    ContainerRun,
    EngineKind,
    EngineTraits,
    Runtime,
    command_environment,
    compile_container_args,
)
from mechasandbox.backends.oci.conclusion import Ended, Launch, answer_after_removal, conclude
from mechasandbox.backends.oci.env_file import env_file
from mechasandbox.backends.oci.plan import render_plan
from mechasandbox.backends.oci.policy_mounts import PolicyMounts, survey
from mechasandbox.backends.oci.probe import (
    PROBE_TTL_S,
    EngineInfo,
    ProbeCache,
    Probed,
    ProbedOnce,
    capabilities,
    runtime_problem,
)
from mechasandbox.backends.oci.protection import ProtectionLayout, protection_layout
from mechasandbox.backends.oci.state import EngineState
from mechasandbox.backends.oci.text import check_text
from mechasandbox.backends.outcome import classify, run_result
from mechasandbox.backends.session_base import BackendSession, SessionSettings
from mechasandbox.backends.unix_sockets import find_named_sockets
from mechasandbox.backends.workspace.placeholders import FileContents
from mechasandbox.backends.workspace.workspace_locks import locked_too_long
from mechasandbox.domain.capabilities import Capabilities
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    ConfigInvalid,
    EngineLost,
    ProcessLimit,
    SandboxError,
    SpawnFailed,
)
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.domain.request import RunRequest, Terminal, piped, terminal_refused
from mechasandbox.domain.result import RunResult, Usage, Violation
from mechasandbox.network.bridge import PROXY_SOCKET_PLACEHOLDER, ProxyBridge
from mechasandbox.network.proxy import RunningProxy
from mechasandbox.network.session import EgressProxy, run_with_proxy
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import ProcessOutcome

# The image the recipe in mechasandbox/images builds (Dockerfile online, busybox offline).
DEFAULT_IMAGE = "mechasandbox/sandbox:latest"


@attrs.frozen(kw_only=True)
class PreparedRun:
    """A request checked against the policy and the workspace, its protected paths laid
    out and the policy's paths surveyed: where a container run starts from (this backend's
    or its warm pool's)."""

    workspace: str
    policy: Policy
    warnings: tuple[str, ...]
    layout: ProtectionLayout
    mounts: PolicyMounts
    file_placeholders: FileContents = ()


@attrs.frozen(kw_only=True)
class OciBackend:
    """A container backend driven through an engine CLI; docker and podman subclass it.

    `image` must already be present in the engine (`--pull never`): see mechasandbox.images.
    `runtime` picks the OCI runtime (`Runtime.RUNSC` for gVisor). `executable` overrides
    the CLI found on PATH. `cpus` optionally caps CPU bandwidth (`--cpus`). `state`: what
    it keeps across runs (see `EngineState`; its own unless given one to share).
    """

    kind: ClassVar[str] = "oci"
    # `ENGINE info` arguments printing the engine's info as JSON (see `_parse_info`).
    info_args: ClassVar[tuple[str, ...]] = ()
    # A Go template printing label `{key}` in `ps --format` (the engines differ).
    label_template: ClassVar[str] = '{{{{.Label "{key}"}}}}'

    runner: ProcessRunner
    image: str = DEFAULT_IMAGE
    runtime: Runtime = Runtime.DEFAULT
    executable: str | None = None
    cpus: float | None = None
    host: HostContext = attrs.field(factory=HostContext.current)
    probe_ttl_s: float = PROBE_TTL_S
    egress: EgressProxy = attrs.field(factory=EgressProxy)
    state: EngineState = attrs.field(factory=EngineState, eq=False, repr=False)
    # What its searches for git indirections read (see `GitFacts`; its own unless given).
    git: GitFacts = attrs.field(factory=GitFacts, eq=False, repr=False)
    _cache: ProbeCache = attrs.field(factory=ProbeCache, init=False, eq=False, repr=False)

    @property
    def name(self) -> str:
        return self.kind

    # -- engine-specific hooks ------------------------------------------------------------

    def _parse_info(self, document: Any) -> EngineInfo | str:
        raise NotImplementedError

    def _default_traits(self) -> EngineTraits:
        raise NotImplementedError

    # -- probing --------------------------------------------------------------------------

    def _unavailable(self, reason: str) -> BackendUnavailable:
        return BackendUnavailable(backend=self.name, reason=reason)

    def _cli(self, executable: str) -> EngineCli:
        env = cli_environment(dict(self.host.env))
        return EngineCli(runner=self.runner, executable=executable, env=env)

    def _probe_engine(self, deadline: Deadline) -> Result[Probed, BackendUnavailable]:
        command = self.executable or self.kind
        executable = find_executable(command, dict(self.host.env))
        if executable is None:
            return Failure(self._unavailable(f"{command} CLI not found on PATH"))
        cli = self._cli(executable)
        info = cli.run_blocking(
            self.state.portal, cli.spec(self.info_args, timeout_s=deadline.call_timeout(20.0))
        )
        if isinstance(info, Failure):
            return Failure(self._unavailable(f"cannot run {executable}: {info.failure().reason}"))
        silent = unreachable(info)
        if silent is not None:
            return Failure(self._unavailable(f"engine not reachable: {silent.reason}"))
        outcome = info.unwrap()
        if outcome.exit_code != 0:
            return Failure(self._unavailable(f"engine not reachable: {tail(outcome.stderr)}"))
        try:
            parsed = self._parse_info(json.loads(outcome.stdout))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return Failure(self._unavailable(f"cannot read the engine's info: {error!r}"))
        if isinstance(parsed, str):
            return Failure(self._unavailable(parsed))
        problem = runtime_problem(self.runtime, parsed)
        if problem is not None:
            return Failure(self._unavailable(problem))
        image = cli.run_blocking(
            self.state.portal,
            cli.spec(
                ("image", "inspect", "--format", "{{.Id}}", self.image),
                timeout_s=deadline.call_timeout(20.0),
            ),
        )
        silent = unreachable(image)
        if silent is not None:
            return Failure(self._unavailable(f"engine not reachable: {silent.reason}"))
        if isinstance(image, Failure) or image.unwrap().exit_code != 0:
            return Failure(
                self._unavailable(
                    f"image {self.image!r} is not present in the engine (it is never pulled): "
                    "build it from the recipe mechasandbox ships "
                    "(`python -m mechasandbox.images` says where and how)"
                )
            )
        image_id = image.unwrap().stdout.decode().strip()
        with_forwarder = self._with_forwarder(parsed, cli, image_id, deadline)
        if isinstance(with_forwarder, str):
            return Failure(self._unavailable(with_forwarder))
        found = capabilities(
            with_forwarder,
            backend=self.name,
            kind=self.kind,
            image=self.image,
            runtime=self.runtime,
        )
        return Success((found, with_forwarder, executable))

    def _with_forwarder(
        self, info: EngineInfo, cli: EngineCli, image_id: str, deadline: Deadline
    ) -> EngineInfo | str:
        """`info` with the image's /bin/sh and socat, found by running the image once
        (cached per image id); the lifeline's watcher needs the one, the allowlist bridge
        the other. A string: why the engine could not be asked."""
        key = (cli.executable, image_id)
        found = self.state.forwarders.get(key)
        if found is None:
            empty = self.state.placeholders.empty_directory()
            run = ContainerRun(run_id=secrets.token_hex(8), owner=owner_id(), workspace=empty)
            args = forwarders.probe_args(self.host, self.image, info.traits, run)
            spec = cli.spec(args, timeout_s=deadline.call_timeout(30.0), env_file=b"")
            answer = cli.run_blocking(self.state.portal, spec)
            silent = unreachable(answer)
            if silent is not None:  # not what the image has: not remembered
                return f"engine not reachable: {silent.reason}"
            found = forwarders.read_probe(answer)
            self.state.forwarders.put(key, found)
        shell, socat = found
        socat, no_bridge = forwarders.verdict(socat, runtime=self.runtime, image=self.image)
        return attrs.evolve(info, shell=shell, socat=socat, no_bridge=no_bridge)

    def _engine(self, deadline: Deadline | None = None) -> Result[Probed, BackendUnavailable]:
        """The probe's findings, probed again once `probe_ttl_s` has passed since the last
        probe *ended* (a slow probe stamped with its start expired the moment it was cached)."""
        cached = self._cache.value
        if cached is None or time.monotonic() - self._cache.at > self.probe_ttl_s:
            cached = self._probe_engine(deadline or Deadline())
            self._cache.value, self._cache.at = cached, time.monotonic()
        return cached

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        return self._engine().map(lambda found: found[0])

    def _traits(self) -> EngineTraits:
        engine = self._engine()
        if isinstance(engine, Failure):
            return self._default_traits()
        return engine.unwrap()[1].traits

    # -- compiling ------------------------------------------------------------------------

    def _container_run(
        self,
        workspace: str,
        policy: Policy,
        *,
        layout: ProtectionLayout | None = None,
        mounts: PolicyMounts | None = None,
        file_placeholders: FileContents = (),
    ) -> ContainerRun:
        if layout is None:
            layout = self._protection_layout(workspace, policy)
        return ContainerRun(
            run_id=secrets.token_hex(8),
            owner=owner_id(),
            workspace=workspace,
            protected=layout.protected,
            pinned=layout.pinned,
            placeholders=layout.placeholders,
            empty_dir=self.state.placeholders.empty_directory() if layout.placeholders else None,
            unix_sockets=find_named_sockets(policy, self.host, workspace).bind,
            mounts=mounts or PolicyMounts(),
            seccomp_profile=self.state.profiles.path(),
            file_placeholders=file_placeholders,
        )

    @staticmethod
    def _env_file(
        policy: Policy, host: HostContext, bridge: ProxyBridge | None = None
    ) -> Result[bytes, SandboxError]:
        """The command's environment as the env file the CLI reads on `ENV_FILE_FD`."""
        made: Result[bytes, SandboxError] = env_file(
            command_environment(policy, host, bridge=bridge)
        )
        return made

    def _protection_layout(self, workspace: str, policy: Policy) -> ProtectionLayout:
        fs = policy.filesystem
        return protection_layout(
            workspace, (*fs.protected, *fs.deny_write), held=self.state.placeholders.is_held
        )

    def _check_protection(
        self, layout: ProtectionLayout, policy: Policy
    ) -> Result[tuple[str, ...], SandboxError]:
        """Refuse a strict run whose protected paths cannot all be covered; otherwise the
        warnings for the ones that are not."""
        if not layout.problems:
            return Success(())
        if policy.enforcement is Enforcement.STRICT:
            return Failure(ConfigInvalid(problem=layout.problems[0], field="filesystem.protected"))
        return Success(tuple(f"not protected: {problem}" for problem in layout.problems))

    def _prepare(
        self, request: RunRequest, policy: Policy, *, probed: Backend
    ) -> Result[PreparedRun, SandboxError]:
        """`prepare_run` (with `probed`'s capabilities: this backend's, or its pool's),
        then the workspace's protection and the policy's paths as the host shows them."""
        prepared = prepare_run(probed, request, policy, self.git)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        warnings, workspace, policy, files = prepared.unwrap()
        mountable = protection.check_mountable(workspace).bind(
            lambda _: check_text(request.argv, workspace)
        )
        if isinstance(mountable, Failure):
            return Failure(mountable.failure())
        layout = self._protection_layout(workspace, policy)
        checked = self._check_protection(layout, policy)
        if isinstance(checked, Failure):
            return Failure(checked.failure())
        mounts: Result[PolicyMounts, SandboxError] = survey(workspace, policy, self.host)
        if isinstance(mounts, Failure):
            return Failure(mounts.failure())
        return Success(
            PreparedRun(
                workspace=workspace,
                policy=policy,
                warnings=(*warnings, *checked.unwrap()),
                layout=layout,
                mounts=mounts.unwrap(),
                file_placeholders=files,
            )
        )

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        workspace: Result[str, SandboxError] = check_workspace(request)
        return workspace.bind(protection.check_mountable).bind(
            lambda checked: render_plan(self, request, policy, host, checked)
        )

    # -- running --------------------------------------------------------------------------

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        """The answer comes within the run's timeout plus `ENGINE_GRACE_S` (and the second
        or two a local kill takes, see `engine_loss`), whatever the engine does."""
        if isinstance(request.stdin, Terminal):  # `docker run -t` would need the caller's pty
            return Failure(ConfigInvalid(problem=terminal_refused(self.name), field="stdin"))
        deadline = Deadline.after(policy.limits.timeout_s)
        engine = self._engine(deadline)
        if isinstance(engine, Failure):
            return await self._run(request, policy, engine, deadline)  # (prepare_run reports it)
        probed = engine.unwrap()
        live = self.state.live
        return await lifeline.sweep_beside(
            self.state.sweeps,
            (self.kind, probed[2]),
            lambda: self._reap(probed[2]),
            lambda: self._run(request, policy, engine, deadline),
            concurrently=probed[1].traits.kind is not EngineKind.PODMAN,
            pending=(lambda: live.remove_left_behind(deadline)) if live.any_left_behind() else None,
            budget_s=deadline.remaining(),
        )

    async def _run(
        self,
        request: RunRequest,
        policy: Policy,
        engine: Result[Probed, BackendUnavailable],
        deadline: Deadline,
    ) -> Result[RunResult, SandboxError]:
        known = ProbedOnce(backend=self, found=engine.map(lambda done: done[0]))
        prepared = self._prepare(request, policy, probed=known)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        if isinstance(engine, Failure):  # (prepare_run reported it: not reached)
            return Failure(engine.failure())
        probed = engine.unwrap()
        ready = prepared.unwrap()
        workspace, policy = ready.workspace, ready.policy
        _capabilities, info, executable = probed
        named = find_named_sockets(policy, self.host, workspace)
        run = self._container_run(
            workspace,
            policy,
            layout=ready.layout,
            mounts=ready.mounts,
            file_placeholders=ready.file_placeholders,
        )
        launch = Launch(
            cli=self._cli(executable),
            info=info,
            request=request,
            policy=policy,
            run=attrs.evolve(run, cidfile=self.state.run_files.cidfile(run.run_id)),
            warnings=(*ready.warnings, *named.warnings),
            bridge=None,
            deadline=deadline,
        )
        started = run_started()
        if forwarders.bridge_for(info.socat, policy, PROXY_SOCKET_PLACEHOLDER) is None:
            # No bridge: a best-effort allowlist run has no network at all.
            return disarm_after(await self._launch(launch), workspace, policy, started, self.git)

        async def body(proxy: RunningProxy | None) -> Result[RunResult, SandboxError]:
            socket = str(proxy.socket_path) if proxy is not None else PROXY_SOCKET_PLACEHOLDER
            bridge = forwarders.bridge_for(info.socat, policy, socket)
            return await self._launch(attrs.evolve(launch, bridge=bridge))

        proxied = await run_with_proxy(self.egress, policy.network, body)
        return disarm_after(proxied, workspace, policy, started, self.git)

    async def _launch(self, launch: Launch) -> Result[RunResult, SandboxError]:
        made = self._env_file(launch.policy, self.host, launch.bridge)
        if isinstance(made, Failure):
            return Failure(made.failure())
        stdin_file = None
        if launch.info.shell:
            stdin = piped(launch.request.stdin)
            stdin_file = lifeline.write_input(stdin, uid=self.host.uid, gid=self.host.gid)
            tied = attrs.evolve(launch.run, lifeline=lifeline.for_policy(launch.policy, stdin_file))
            launch = attrs.evolve(launch, run=tied)
        try:
            async with lifeline.feeding(piped(launch.request.stdin), stdin_file):
                return await self._launch_tied(launch, made.unwrap())
        finally:
            lifeline.remove_input(stdin_file)
            engine_loss.forget_cidfile(launch.run.cidfile)

    async def _launch_tied(
        self, launch: Launch, env_file: bytes
    ) -> Result[RunResult, SandboxError]:
        request, policy, run, cli = launch.request, launch.policy, launch.run, launch.cli
        deadline = launch.deadline
        args = compile_container_args(
            request,
            policy,
            self.host,
            self.image,
            self.runtime,
            launch.info.traits,
            run=run,
            cpus=self.cpus,
            bridge=launch.bridge,
        )
        spec = cli.spec(
            args,
            stdin=piped(request.stdin),
            timeout_s=deadline.command_timeout(policy.limits.timeout_s),
            max_output_bytes=policy.limits.max_output_bytes,
            env_file=env_file,
            on_output=request.on_output,
        )
        removal = self._remove_args(run.name, launch.info.traits)
        if run.lifeline is not None:
            spec = lifeline.tie(spec, removal=(cli.executable, *removal))
        placeholders = protection.placeholder_paths(run)
        if not self.state.placeholders.hold(run.workspace, placeholders, run.file_placeholders):
            return Failure(BackendFailed(backend=self.name, reason=locked_too_long("container")))
        self.state.live.add(run.name, cli)
        guards = protection.guards(run)
        # Until the engine has said how the container ended, its command may still run.
        ended = Ended(answer=Failure(BackendFailed(backend=self.name, reason="cancelled")))
        left: str | None = None
        lost: tuple[str, ...] = ()
        started = run_started()
        try:
            launched = await self.runner.run(attrs.evolve(spec, watch=guards.watcher()))
            ended = await self._read(launch, launched)
        finally:
            lost = tuple(path for path, _ in guards.lost())
            guards.close()
            with anyio.CancelScope(shield=True):
                left = await live.remove(
                    cli,
                    run.name,
                    run.run_id,
                    thorough=not ended.over,
                    deadline=deadline,
                    removal=removal,
                )
                fate = None
                if left is not None and not ended.over:
                    # The engine cannot stop it: this host does, where it can.
                    fate = await anyio.to_thread.run_sync(
                        engine_loss.stop_container_processes,
                        engine_loss.read_cidfile(run.cidfile),
                    )
            if left is None:
                self.state.live.discard(run.name)
            else:  # removed at the next run, at close() or at exit (see LiveContainers)
                self.state.live.left_behind(run.name)
            self.state.placeholders.release(run.workspace, placeholders)
        answer = answer_after_removal(ended, left, fate, name=run.name, backend=self.name)
        if lost:
            # Their covers came off during the run, before the watcher stopped it: what the
            # command made below them is looked at as if nothing protected it (the
            # container is gone: nothing of it writes after this look).
            answer = disarm_after(answer, run.workspace, policy, started, self.git, exposed=lost)
        return answer

    async def _read(self, launch: Launch, launched: Result[ProcessOutcome, SpawnFailed]) -> Ended:
        """What the engine CLI's end says; `over` once the container's end is known."""
        if isinstance(launched, Failure):
            failed = BackendFailed(backend=self.name, reason=launched.failure().message)
            return Ended(answer=Failure(failed), over=True)
        outcome, refused = launched.unwrap(), 0
        limit = launch.policy.limits.max_processes
        if launch.run.lifeline is not None:
            starved = lifeline.starved(outcome)
            if starved is not None:
                partial = self._result(starved, launch.warnings, exit_code=None, signal=None)
                detail = (
                    f"process limit of {limit} reached: the sandbox's watcher could not fork, "
                    "and the run was ended"
                )
                starved_run = ProcessLimit(detail=detail, partial=partial)
                return Ended(answer=Failure(starved_run), over=True)
            outcome, refused = lifeline.refused_forks(outcome)
        unfinished = self._result(outcome, launch.warnings, exit_code=None, signal=None)
        if refused and limit is not None:
            # What a limit refused in a run is a violation; it ends no run (EAGAIN only).
            detail = f"process limit of {limit} reached: {refused} forks refused"
            violation = Violation(kind="process_limit", detail=detail)
            unfinished = attrs.evolve(unfinished, violations=(*unfinished.violations, violation))
        if outcome.stopped is not None:  # a guard came off: it is removed after
            stopped = BackendFailed(backend=self.name, reason=f"stopped: {outcome.stopped}")
            return Ended(answer=Failure(stopped), partial=unfinished)
        if outcome.timed_out:
            # Killing the CLI client does not stop the container: it is removed after.
            return Ended(
                answer=classify(unfinished, limits=launch.policy.limits, timed_out=True),
                partial=unfinished,
            )
        concluded = await conclude(launch, outcome, unfinished, backend=self.name, image=self.image)
        lost = isinstance(concluded, Failure) and isinstance(concluded.failure(), EngineLost)
        return Ended(answer=concluded, over=not lost, partial=unfinished)

    def _remove_args(self, name: str, traits: EngineTraits | None = None) -> tuple[str, ...]:
        """`rm` a container at once (podman would first wait for its stop timeout).
        `traits`: the engine's, when known (else probed, or from the cache)."""
        if (traits or self._traits()).kind is EngineKind.PODMAN:
            return ("rm", "--force", "--time", "0", name)
        return ("rm", "--force", name)

    def _result(
        self,
        outcome: ProcessOutcome,
        warnings: tuple[str, ...],
        *,
        exit_code: int | None,
        signal: int | None,
    ) -> RunResult:
        # The CLI's rusage is not the container's: report none rather than a wrong figure.
        result = run_result(self.name, outcome, warnings=warnings)
        return attrs.evolve(result, exit_code=exit_code, signal=signal, usage=Usage())

    async def open_session(
        self, workspace: str, policy: Policy, settings: SessionSettings
    ) -> Result[BackendSession, SandboxError]:
        """One container for many commands, the session agent its process (see `session`)."""
        from mechasandbox.backends.oci.session import open_oci_session

        return await open_oci_session(self, workspace, policy, settings)

    async def reap_leftovers(
        self, *, include_live: bool = False
    ) -> Result[tuple[str, ...], SandboxError]:
        """Remove labelled containers whose owner process is gone (after a host crash).

        Containers of another live process on this host are kept unless `include_live`;
        those of another host (a shared remote engine) are kept unless `include_live`.
        """
        engine = self._engine()
        if isinstance(engine, Failure):
            return Failure(engine.failure())
        return await self._reap(engine.unwrap()[2], include_live=include_live)

    async def _reap(
        self, executable: str, *, include_live: bool = False
    ) -> Result[tuple[str, ...], SandboxError]:
        return await live.reap(
            self._cli(executable),
            backend=self.name,
            owner_template=self.label_template.format(key=LABEL_OWNER),
            include_live=include_live,
        )


async def reap_leftovers(
    engine: OciBackend, *, include_live: bool = False
) -> Result[tuple[str, ...], SandboxError]:
    """Remove containers left by mechasandbox processes that died (see `OciBackend`)."""
    return await engine.reap_leftovers(include_live=include_live)
