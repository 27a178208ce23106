"""The `process` backend: rlimits, umask, session, timeout, whole-tree teardown. No isolation.

It confines neither the filesystem nor the network, and host processes stay visible; its
capabilities say so, so a strict policy refuses it and best-effort lists each gap.
"""

from __future__ import annotations

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import (
    HostContext,
    LaunchPlan,
    check_workspace,
    resolve_command,
    scrubbed_environment,
)
from mechasandbox.backends.execute import execute_spec, prepare_run
from mechasandbox.backends.resources import (
    UMASK,
    default_cgroups,
    describe_cgroups,
    resource_support,
    run_rlimits,
)
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.limits.rlimits import describe
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import SpawnSpec


@attrs.frozen(kw_only=True)
class ProcessBackend:
    runner: ProcessRunner
    cgroups: CgroupManager | str = attrs.field(factory=default_cgroups)
    host: HostContext = attrs.field(factory=HostContext.current)

    @property
    def name(self) -> str:
        return "process"

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        linux = self.host.platform.startswith("linux")
        enforced = {
            Protection.ENVIRONMENT,
            Protection.TIMEOUT,
            Protection.CPU,
            Protection.OPEN_FILES,
            Protection.FILE_SIZE,
        }
        details = [
            (Protection.FILESYSTEM_READ, "no filesystem isolation: the command reads what you can"),
            (
                Protection.FILESYSTEM_WRITE,
                "no filesystem isolation: the command writes where you can",
            ),
            (Protection.PROTECTED_PATHS, "no filesystem isolation"),
            (Protection.NETWORK_NONE, "no network isolation"),
            (Protection.NETWORK_ALLOWLIST, "no network isolation"),
            (Protection.NAMED_UNIX_SOCKETS, "every host unix socket is reachable"),
            (Protection.PID_ISOLATION, "host processes can be signalled and traced"),
            (Protection.HOST_PROCESSES_HIDDEN, "host processes are visible"),
            (Protection.CPU, "RLIMIT_CPU"),
            (Protection.OPEN_FILES, "RLIMIT_NOFILE"),
            (Protection.FILE_SIZE, "RLIMIT_FSIZE"),
        ]
        warnings: list[str] = []
        if linux:
            enforced.add(Protection.TREE_TEARDOWN)
            details.append(
                (Protection.TREE_TEARDOWN, "spawn helper is child subreaper; kills the whole tree")
            )
        else:
            details.append(
                (Protection.TREE_TEARDOWN, "process group only: a setsid'd child can escape")
            )
        resources = resource_support(
            self.cgroups,
            self.host.uid,
            memory_rlimit="RLIMIT_AS (address space; best-effort on macOS)",
        )
        enforced |= resources.enforced
        details += resources.details
        warnings += resources.warnings
        return Success(
            Capabilities(
                backend=self.name,
                enforced=frozenset(enforced),
                details=tuple(details),
                warnings=tuple(warnings),
            )
        )

    def _spec(
        self, request: RunRequest, policy: Policy, host: HostContext, workspace: str
    ) -> Result[SpawnSpec, SandboxError]:
        env = scrubbed_environment(policy.environment, dict(host.env))
        rlimits = run_rlimits(policy.limits, self.cgroups)
        return resolve_command(request.argv[0], env, workspace).map(
            lambda executable: SpawnSpec(
                argv=request.argv,
                env=tuple(sorted(env.items())),
                cwd=workspace,
                stdin=request.stdin,
                timeout_s=policy.limits.timeout_s,
                max_output_bytes=policy.limits.max_output_bytes,
                umask=UMASK,
                rlimits=rlimits,
                executable=executable,
            )
        )

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        def render(spec: SpawnSpec) -> LaunchPlan:
            cgroup = describe_cgroups(self.cgroups)
            return LaunchPlan(
                backend=self.name,
                sections=(
                    ("argv", " ".join(spec.argv)),
                    ("executable", spec.executable or ""),
                    ("cwd", spec.cwd),
                    ("environment", " ".join(name for name, _ in spec.env)),
                    ("umask", f"{spec.umask:04o}"),
                    ("rlimits", describe(spec.rlimits)),
                    ("cgroup", cgroup),
                ),
            )

        workspace: Result[str, SandboxError] = check_workspace(request)
        return workspace.bind(lambda workspace: self._spec(request, policy, host, workspace)).map(
            render
        )

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        prepared = prepare_run(self, request, policy)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        warnings, workspace, policy = prepared.unwrap()
        spec = self._spec(request, policy, self.host, workspace)
        if isinstance(spec, Failure):
            return Failure(spec.failure())
        return await execute_spec(
            self.name, self.runner, spec.unwrap(), policy, warnings=warnings, cgroups=self.cgroups
        )
