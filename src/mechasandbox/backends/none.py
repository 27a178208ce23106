"""The `none` backend: no confinement at all. Only ever used when named explicitly.

It still scrubs the environment, applies the timeout and caps output (those are the
runner's), and every result carries a warning saying that commands run unconfined.
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
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import SpawnSpec

# Worded to be true wherever it is shown: `doctor` (where nothing ran), `policy`, and
# every result.
UNCONFINED_WARNING = (
    "backend 'none': commands run UNCONFINED with your full privileges "
    "(filesystem, network, processes); only the timeout, output cap and environment apply"
)


@attrs.frozen(kw_only=True)
class NoneBackend:
    runner: ProcessRunner
    host: HostContext = attrs.field(factory=HostContext.current)

    @property
    def name(self) -> str:
        return "none"

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        return Success(
            Capabilities(
                backend=self.name,
                enforced=frozenset({Protection.ENVIRONMENT, Protection.TIMEOUT}),
                warnings=(UNCONFINED_WARNING,),
            )
        )

    def _spec(
        self, request: RunRequest, policy: Policy, workspace: str
    ) -> Result[SpawnSpec, SandboxError]:
        env = scrubbed_environment(policy.environment, dict(self.host.env))
        return resolve_command(request.argv[0], env, workspace).map(
            lambda executable: SpawnSpec(
                argv=request.argv,
                env=tuple(sorted(env.items())),
                cwd=workspace,
                stdin=request.stdin,
                timeout_s=policy.limits.timeout_s,
                max_output_bytes=policy.limits.max_output_bytes,
                umask=0o022,
                executable=executable,
            )
        )

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        workspace: Result[str, SandboxError] = check_workspace(request)
        return workspace.bind(lambda workspace: self._spec(request, policy, workspace)).map(
            lambda spec: LaunchPlan(
                backend=self.name,
                sections=(("argv", " ".join(spec.argv)), ("cwd", spec.cwd)),
                warnings=(UNCONFINED_WARNING,),
            )
        )

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        # Naming `none` is the opt-in: every gap becomes a warning instead of a refusal.
        unconfined = attrs.evolve(policy, enforcement=Enforcement.BEST_EFFORT)
        prepared = prepare_run(self, request, unconfined)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        warnings, workspace, _unconfined = prepared.unwrap()
        spec = self._spec(request, policy, workspace)
        if isinstance(spec, Failure):
            return Failure(spec.failure())
        return await execute_spec(self.name, self.runner, spec.unwrap(), policy, warnings=warnings)
