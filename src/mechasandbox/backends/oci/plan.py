"""What a docker or podman run would do, rendered for `mechasandbox policy` and golden
tests without running anything (`OciBackend.plan`)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext, LaunchPlan
from mechasandbox.backends.git_indirections import planned_policy
from mechasandbox.backends.oci import forwarders, lifeline
from mechasandbox.backends.oci.compiler import (
    command_environment,
    compile_container_args,
    tmp_bytes,
)
from mechasandbox.backends.oci.env_file import ENV_FILE_FD
from mechasandbox.backends.oci.policy_mounts import PolicyMounts, survey
from mechasandbox.backends.oci.text import check_text
from mechasandbox.domain.errors import SandboxError
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.network.bridge import PROXY_SOCKET_PLACEHOLDER

if TYPE_CHECKING:
    from mechasandbox.backends.oci.engine import OciBackend


def render_plan(
    backend: OciBackend, request: RunRequest, policy: Policy, host: HostContext, workspace: str
) -> Result[LaunchPlan, SandboxError]:
    """What `backend` would run for `request` in `workspace` (`OciBackend.plan`)."""
    text: Result[None, SandboxError] = check_text(request.argv, workspace)
    if isinstance(text, Failure):
        return Failure(text.failure())
    planned, files = planned_policy(policy, workspace, host, backend.git)
    mounts: Result[PolicyMounts, SandboxError] = survey(workspace, planned, host)
    if isinstance(mounts, Failure):
        return Failure(mounts.failure())
    run = backend._container_run(
        workspace, planned, mounts=mounts.unwrap(), file_placeholders=files
    )
    engine = backend._engine()
    info = engine.unwrap()[1] if isinstance(engine, Success) else None
    socat = info.socat if info is not None else None
    bridge = forwarders.bridge_for(socat, policy, PROXY_SOCKET_PLACEHOLDER)
    env = command_environment(policy, host, bridge=bridge)
    checked = backend._env_file(policy, host, bridge)
    if isinstance(checked, Failure):
        return Failure(checked.failure())
    if info is not None and info.shell:
        stdin = None if request.stdin is None else lifeline.STDIN_PLACEHOLDER
        run = attrs.evolve(run, lifeline=lifeline.for_policy(policy, stdin))
    args = compile_container_args(
        request,
        planned,
        host,
        backend.image,
        backend.runtime,
        backend._traits(),
        run=run,
        cpus=backend.cpus,
        bridge=bridge,
    )
    return Success(
        LaunchPlan(
            backend=backend.name,
            sections=(
                ("engine", backend.executable or backend.kind),
                ("image", backend.image),
                ("runtime", backend.runtime.value),
                ("argv", shlex.join((backend.executable or backend.kind, *args))),
                (
                    f"environment (env file on descriptor {ENV_FILE_FD})",
                    " ".join(f"{name}=…" for name in sorted(env)),
                ),
                ("/tmp", f"tmpfs of {tmp_bytes(policy.limits)} bytes"),
            ),
        )
    )
