"""The template of every backend that spawns through the process runner: a backend says
what it would spawn for a request under a policy (`compile`), and `plan` and `run` derive
from that here, in one place.

A backend supplies
- `compile(job, setting)`: the `Launch` for a `Job` (the request, the policy, the host, the
  checked workspace): the `SpawnSpec`, the cgroups it runs in, what its compiler made of
  the policy; pure but for reading the host;
- `plan_setting(policy)`: the per-run inputs of `compile` as `plan` shows them (a private
  tmp dir, the proxy's port, a log tag: placeholders), and `describe`, the plan's sections
  and warnings (`command_sections`, `limit_sections` for what backends show alike);
- where a run needs more than that: `open_setting`/`close_setting` (the run's own tmp dir,
  its lock on the workspace), `proxy_for`/`with_proxy` (the allowlist proxy it talks to)
  and `launch` (what surrounds the spawn: guards, the log of denials, an env-file).

A run: `prepare_run` (probe, enforcement, workspace, git indirections), the setting
opened, the proxy started where there is one, `compile` with the real setting, `launch`
(by default `execute_spec`: cgroup, runner, classification), the setting closed, and for a
backend that protects the workspace, the repositories the run made disarmed; and for one
that `explains_refusals`, the refusals the run reported explained (`refusal_hints`). A plan:
the workspace checked, `compile` with the plan's setting, `describe`.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import (
    HostContext,
    LaunchPlan,
    check_workspace,
    scrubbed_environment,
)
from mechasandbox.backends.execute import disarm_after, execute_spec, prepare_run, run_started
from mechasandbox.backends.git_indirections import planned_policy
from mechasandbox.backends.lookup import resolve_command
from mechasandbox.backends.resources import describe_cgroups
from mechasandbox.backends.toolchains import find_toolchains
from mechasandbox.domain.capabilities import Capabilities
from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.limits.rlimits import describe
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import ChildHook, ProcessOutcome, RlimitSetting, SpawnSpec

if TYPE_CHECKING:
    from mechasandbox.backends.git_facts import GitFacts
    from mechasandbox.backends.refusals import RefusalView
    from mechasandbox.backends.workspace.placeholders import FileContents
    from mechasandbox.network.proxy import RunningProxy
    from mechasandbox.network.session import EgressProxy

Compiled = TypeVar("Compiled")
Setting = TypeVar("Setting")
Sections = tuple[tuple[str, str], ...]


@attrs.frozen(kw_only=True)
class Launch(Generic[Compiled]):
    """What a backend would spawn for one run. `compiled`: what its compiler made of the
    policy (the bwrap command, the SBPL profile...), for `describe`; `cgroups`: the
    backend's cgroups (None: it runs in none); `adjust`: its reading of the raw outcome
    (see `execute_spec`)."""

    spec: SpawnSpec
    compiled: Compiled
    warnings: tuple[str, ...] = ()
    cgroups: CgroupManager | str | None = None
    adjust: Callable[[ProcessOutcome], ProcessOutcome] | None = None


@attrs.frozen(kw_only=True)
class Job:
    """One command to compile: its request, the policy (for a run, with the workspace's git
    indirections protected: see `prepare_run`), the host, the workspace's real path (a
    checked one), the warnings a run has gathered so far, and the protected paths whose
    placeholder is a file, with their content (see `with_git_indirections`)."""

    request: RunRequest
    policy: Policy
    host: HostContext
    workspace: str
    warnings: tuple[str, ...] = ()
    file_placeholders: FileContents = ()


class SpawningBackend(abc.ABC, Generic[Compiled, Setting]):
    """`plan` and `run` of a backend that spawns through `runner`, from its `compile`."""

    __slots__ = ()

    runner: ProcessRunner
    host: HostContext
    # It protects paths of the workspace: `plan` shows the policy with the workspace's git
    # indirections protected too, and the repositories a run made are disarmed after it.
    protects_workspace: ClassVar[bool] = False
    # Its refusals are explained after a run (`refusal_view`, `refusal_hints.explained`):
    # a backend whose command sees less of the host than the host does, and that cuts the
    # network when the policy says `none`.
    explains_refusals: ClassVar[bool] = False
    # What its searches for git indirections read, reused by the next (a field of a backend
    # that protects the workspace: see `GitFacts`; None: each search reads everything).
    git: GitFacts | None = None
    # Its allowlist proxy listens on loopback TCP too (else on its unix socket only).
    proxy_over_tcp: ClassVar[bool] = False
    # It hides the home directory from the command: the toolchains there that the policy
    # names (`filesystem.toolchains`) are made readable for each run (see `toolchains`).
    hides_home: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def name(self) -> str: ...

    @abc.abstractmethod
    def probe(self) -> Result[Capabilities, BackendUnavailable]: ...

    @abc.abstractmethod
    def compile(self, job: Job, setting: Setting) -> Result[Launch[Compiled], SandboxError]:
        """What a run of `job` would spawn."""

    @abc.abstractmethod
    def plan_setting(self, policy: Policy) -> Setting:
        """The per-run inputs of `compile` as a plan shows them."""

    @abc.abstractmethod
    def describe(self, job: Job, launch: Launch[Compiled], setting: Setting) -> LaunchPlan:
        """The plan's sections and warnings for `launch`."""

    def open_setting(self, workspace: str, policy: Policy) -> Result[Setting, SandboxError]:
        """The per-run inputs of a real run, taken before it starts (default: the plan's)."""
        return Success(self.plan_setting(policy))

    def close_setting(self, setting: Setting, workspace: str) -> None:
        """Gives back what `open_setting` took, after the run."""

    def proxy_for(self, policy: Policy) -> EgressProxy | None:
        """The allowlist proxy a run under `policy` talks to (None: no proxy)."""
        return None

    def refusal_view(self, job: Job, setting: Setting) -> RefusalView:
        """What the run's sandbox showed and let change, to explain its refusals after it
        (see `refusals`); asked of a backend with `explains_refusals` only."""
        raise NotImplementedError(f"{self.name} explains no refusals")

    def with_proxy(self, setting: Setting, proxy: RunningProxy) -> Setting:
        """The setting once the run's proxy listens."""
        return setting

    async def launch(
        self, job: Job, launch: Launch[Compiled], setting: Setting
    ) -> Result[RunResult, SandboxError]:
        """Runs the spawn and classifies its outcome."""
        return await execute_spec(
            self.name,
            self.runner,
            launch.spec,
            job.policy,
            warnings=job.warnings + launch.warnings,
            cgroups=launch.cgroups,
            adjust=launch.adjust,
        )

    # --- derived --------------------------------------------------------------------------
    def with_toolchains(self, request: RunRequest, policy: Policy, host: HostContext) -> Policy:
        """`policy` with the toolchains it names readable, for a backend that hides the
        home directory (read now, when the run starts: see `backends.toolchains`)."""
        if not self.hides_home or not policy.filesystem.toolchains:
            return policy
        argv0 = request.argv[0] if request.argv else ""
        workspace = os.path.realpath(request.workspace)
        return find_toolchains(policy.filesystem, argv0, host, workspace).applied(policy)

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        policy = self.with_toolchains(request, policy, host)
        setting = self.plan_setting(policy)

        def job(workspace: str) -> Job:
            shown, files = (
                planned_policy(policy, workspace, host, self.git)
                if self.protects_workspace
                else (policy, ())
            )
            return Job(
                request=request,
                policy=shown,
                host=host,
                workspace=workspace,
                file_placeholders=files,
            )

        def described(job: Job) -> Result[LaunchPlan, SandboxError]:
            compiled = self.compile(job, setting)
            return compiled.map(lambda launch: self.describe(job, launch, setting))

        checked: Result[str, SandboxError] = check_workspace(request)
        return checked.map(job).bind(described)

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        def opened(
            found: tuple[tuple[str, ...], str, Policy, FileContents],
        ) -> Result[tuple[Job, Setting], SandboxError]:
            warnings, workspace, chosen, files = found
            job = Job(
                request=request,
                policy=chosen,
                host=self.host,
                workspace=workspace,
                warnings=warnings,
                file_placeholders=files,
            )
            return self.open_setting(workspace, chosen).map(lambda setting: (job, setting))

        policy = self.with_toolchains(request, policy, self.host)
        prepared = prepare_run(self, request, policy, self.git).bind(opened)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        job, setting = prepared.unwrap()
        started = run_started()

        async def body(proxy: RunningProxy | None) -> Result[RunResult, SandboxError]:
            given = setting if proxy is None else self.with_proxy(setting, proxy)
            compiled = self.compile(job, given)
            if isinstance(compiled, Failure):
                return Failure(compiled.failure())
            return await self.launch(job, compiled.unwrap(), given)

        try:
            egress = self.proxy_for(job.policy)
            if egress is None:
                result = await body(None)
            else:
                # The proxy (and with it asyncio) is imported only by runs that need it.
                from mechasandbox.network.session import run_with_proxy

                result = await run_with_proxy(
                    egress, job.policy.network, body, listen_tcp=self.proxy_over_tcp
                )
        finally:
            self.close_setting(setting, job.workspace)
        if self.protects_workspace:
            result = disarm_after(result, job.workspace, job.policy, started, self.git)
        if not self.explains_refusals:
            return result
        return explain_refusals(
            result, lambda: self.refusal_view(job, setting), job.policy, job.host
        )


# --- pieces the backends share ----------------------------------------------------------------
def explain_refusals(
    result: Result[RunResult, SandboxError],
    view_of: Callable[[], RefusalView],
    policy: Policy,
    host: HostContext,
) -> Result[RunResult, SandboxError]:
    """`refusal_hints.explained`, for a run that may have something to explain: one that
    succeeded with nothing on its stderr has none (and most runs are such, so the hints'
    patterns are loaded only when one is not)."""
    if isinstance(result, Success):
        finished = result.unwrap()
        if finished.exit_code == 0 and not finished.stderr:
            return result
    from mechasandbox.backends.refusal_hints import explained

    return explained(result, view_of, policy, host)


def spawn_spec(
    job: Job,
    *,
    argv: tuple[str, ...],
    env: tuple[tuple[str, str], ...],
    executable: str,
    rlimits: tuple[RlimitSetting, ...] = (),
    hooks: tuple[ChildHook, ...] = (),
    terminal_session: bool = True,
) -> SpawnSpec:
    """The spawn of `job` in its workspace: its stdin and output sink, and the policy's
    timeout, output cap and umask; `argv` is the command's, or its launcher's (`bwrap`,
    `sandbox-exec`). `terminal_session`: see `SpawnSpec.terminal_session`."""
    return SpawnSpec(
        argv=argv,
        env=env,
        cwd=job.workspace,
        stdin=job.request.stdin,
        on_output=job.request.on_output,
        timeout_s=job.policy.limits.timeout_s,
        max_output_bytes=job.policy.limits.max_output_bytes,
        umask=job.policy.filesystem.umask,
        rlimits=rlimits,
        hooks=hooks,
        executable=executable,
        terminal_session=terminal_session,
    )


def direct_spec(
    job: Job, *, rlimits: tuple[RlimitSetting, ...] = ()
) -> Result[SpawnSpec, SandboxError]:
    """The command itself spawned, with the scrubbed environment and nothing around it.
    Its HOME is the user's (unless the policy sets one): such a backend hides no file, so
    a private home would only break the tools that keep their state there."""
    env = scrubbed_environment(job.policy.environment, dict(job.host.env))
    if job.host.home:
        env.setdefault("HOME", job.host.home)
    return resolve_command(job.request.argv[0], env, job.workspace).map(
        lambda executable: spawn_spec(
            job,
            argv=tuple(job.request.argv),
            env=tuple(sorted(env.items())),
            executable=executable,
            rlimits=rlimits,
        )
    )


def loopback_proxy(proxy: RunningProxy) -> tuple[int, str] | None:
    """The port and URL (token included) of a proxy listening on loopback TCP."""
    if proxy.tcp_address is None or not proxy.tcp_url:
        return None
    return (proxy.tcp_address[1], proxy.tcp_url)


def command_sections(spec: SpawnSpec) -> Sections:
    """The command as spawned: argv, executable, directory, the environment's names."""
    return (
        ("argv", " ".join(spec.argv)),
        ("executable", spec.executable or ""),
        ("cwd", spec.cwd),
        ("environment", " ".join(name for name, _ in spec.env)),
    )


def limit_sections(spec: SpawnSpec, cgroups: CgroupManager | str | None = None) -> Sections:
    """The umask, the rlimits and (for a backend with cgroups) the run's cgroup."""
    limits = (("umask", f"{spec.umask:04o}"), ("rlimits", describe(spec.rlimits)))
    if cgroups is None:
        return limits
    return (*limits, ("cgroup", describe_cgroups(cgroups)))


def launcher_environment(spec: SpawnSpec) -> str:
    """The environment of a launcher that runs on the host (`LAUNCHER_ENVIRONMENT`)."""
    return " ".join(f"{name}={value}" for name, value in spec.env) or "none"
