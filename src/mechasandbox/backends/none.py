"""The `none` backend: no confinement at all. Only ever used when named explicitly.

It still scrubs the environment, applies the timeout and caps output (those are the
runner's), and every result carries a warning saying that commands run unconfined.
"""

from __future__ import annotations

import attrs
from returns.result import Result, Success

from mechasandbox.backends.base import HostContext, LaunchPlan
from mechasandbox.backends.capability_table import RUNNER, CapabilityTable
from mechasandbox.backends.template import Job, Launch, SpawningBackend, direct_spec
from mechasandbox.domain.capabilities import Capabilities
from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.runner.protocol import ProcessRunner

# Worded to be true wherever it is shown: `doctor` (where nothing ran), `policy`, and
# every result.
UNCONFINED_WARNING = (
    "backend 'none': commands run UNCONFINED with your full privileges "
    "(filesystem, network, processes); only the timeout, output cap and environment apply"
)
_UNCONFINED = RUNNER | CapabilityTable(warnings=(UNCONFINED_WARNING,))


@attrs.frozen(kw_only=True)
class NoneBackend(SpawningBackend[None, None]):
    runner: ProcessRunner
    host: HostContext = attrs.field(factory=HostContext.current)

    @property
    def name(self) -> str:
        return "none"

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        return Success(_UNCONFINED.capabilities(self.name))

    def compile(self, job: Job, setting: None) -> Result[Launch[None], SandboxError]:
        return direct_spec(job).map(lambda spec: Launch(spec=spec, compiled=None))

    def plan_setting(self, policy: Policy) -> None:
        return None

    def describe(self, job: Job, launch: Launch[None], setting: None) -> LaunchPlan:
        return LaunchPlan(
            backend=self.name,
            sections=(("argv", " ".join(launch.spec.argv)), ("cwd", launch.spec.cwd)),
            warnings=(UNCONFINED_WARNING,),
        )

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        # Naming `none` is the opt-in: every gap becomes a warning instead of a refusal.
        unconfined = attrs.evolve(policy, enforcement=Enforcement.BEST_EFFORT)
        return await super().run(request, unconfined)
