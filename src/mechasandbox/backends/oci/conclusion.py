"""Reading how a container run ended, from the engine CLI's end and the engine's record.

The CLI's exit status is the command's, except where the engine says otherwise: 125 (the
engine failed), 126/127 with the container never started or an init that could not exec
the command (`spawn_failed`), a signal status whose container the kernel OOM-killed
(`memory_limit`). And where the engine cannot say anything any more, or says the container
still runs although its CLI ended, the engine was lost (`engine_lost`): the run is not
over, and the backend stops what may still run (`engine_loss`).
"""

from __future__ import annotations

import re

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.oci import forwarders, lifeline
from mechasandbox.backends.oci.cli import (
    ENGINE_ERROR,
    Deadline,
    EngineCli,
    Unreachable,
    exit_status,
    tail,
)
from mechasandbox.backends.oci.compiler import ContainerRun
from mechasandbox.backends.oci.probe import EngineInfo
from mechasandbox.backends.outcome import classify
from mechasandbox.domain.errors import (
    BackendFailed,
    EngineLost,
    MemoryLimit,
    SandboxError,
    SpawnFailed,
    partial_result,
)
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.network.bridge import ProxyBridge
from mechasandbox.runner.spec import ProcessOutcome


@attrs.frozen(kw_only=True)
class Launch:
    """One container about to be started, and what its outcome is read with. `deadline`:
    when the run must have its answer (every engine call of the run is given what is left)."""

    cli: EngineCli
    info: EngineInfo
    request: RunRequest
    policy: Policy
    run: ContainerRun
    warnings: tuple[str, ...]
    bridge: ProxyBridge | None
    deadline: Deadline = Deadline()


@attrs.frozen(kw_only=True)
class Ended:
    """What the engine CLI's end says: the `answer` as read, whether the container's end is
    known (`over`: the engine reported it; otherwise its command may still run), and the
    output read so far as a result without a status (`partial`)."""

    answer: Result[RunResult, SandboxError]
    over: bool = False
    partial: RunResult | None = None


async def conclude(
    launch: Launch, outcome: ProcessOutcome, unfinished: RunResult, *, backend: str, image: str
) -> Result[RunResult, SandboxError]:
    """The run's answer from the CLI's end (`unfinished`: its output, without a status)."""
    command, limits = launch.request.argv[0], launch.policy.limits
    if launch.bridge is not None:
        failed = forwarders.bridge_failure(outcome, command, backend=backend, image=image)
        if failed is not None:
            return Failure(failed)
    if launch.run.lifeline is not None:
        unstarted = lifeline.exec_failure(outcome, command, image=image)
    else:
        unstarted = _catatonit_failure(outcome, command, image=image)
    if unstarted is not None:
        return Failure(unstarted)
    code, signal = exit_status(outcome.exit_code, outcome.signal)
    result = attrs.evolve(unfinished, exit_code=code, signal=signal)
    status = outcome.exit_code
    if status in (ENGINE_ERROR, 126, 127) or signal is not None:
        state = await launch.cli.inspect_state(
            launch.run.name, timeout_s=launch.deadline.call_timeout()
        )
        if isinstance(state, Unreachable):
            reason = (
                f"the engine CLI ended with status {status} ({tail(outcome.stderr, 200)}) "
                f"and the engine did not answer after it: {state.reason}"
            )
            return Failure(EngineLost(backend=backend, reason=reason, partial=unfinished))
        if state is not None and state.get("Running"):
            reason = (
                f"the engine CLI lost the container while it ran (it ended with status "
                f"{status}: {tail(outcome.stderr, 200)})"
            )
            return Failure(EngineLost(backend=backend, reason=reason, partial=unfinished))
        never_started = state is None or bool(state.get("Error"))
        if state is not None and state.get("OOMKilled") and limits.memory_bytes:
            detail = (
                f"memory limit of {limits.memory_bytes} bytes exceeded; "
                "the container was OOM-killed"
            )
            return Failure(MemoryLimit(detail=detail, partial=result))
        if status == ENGINE_ERROR and never_started:
            return Failure(BackendFailed(backend=backend, reason=tail(outcome.stderr)))
        if status in (126, 127) and (never_started or _is_init_exec_failure(outcome.stderr)):
            reason = "command not found" if status == 127 else "not executable"
            return Failure(
                SpawnFailed(
                    command=command,
                    reason=f"{reason} in image {image!r}: {tail(outcome.stderr, 200)}",
                    exit_status=status,
                )
            )
    return classify(result, limits=limits, timed_out=False)


# catatonit (podman's --init) reports a command it cannot exec this way and exits 1.
_CATATONIT_EXEC = re.compile(rb"^ERROR \(catatonit:\d+\): failed to exec pid1: (.+)$", re.MULTILINE)


def _catatonit_failure(outcome: ProcessOutcome, command: str, *, image: str) -> SpawnFailed | None:
    """podman's init could not exec the command: `spawn_failed` with the status a shell
    gives (127 not found, 126 otherwise), as tini's report and the other backends."""
    found = _CATATONIT_EXEC.search(outcome.stderr) if outcome.exit_code == 1 else None
    if found is None:
        return None
    cause = found.group(1).decode("utf-8", "replace").strip()
    status = 127 if cause in ("No such file or directory", "Not a directory") else 126
    reason = "command not found" if status == 127 else "not executable"
    return SpawnFailed(
        command=command,
        reason=f"{reason} in image {image!r}: {found.group(0).decode('utf-8', 'replace')}",
        exit_status=status,
    )


def _is_init_exec_failure(stderr: bytes) -> bool:
    """tini (docker --init, podman-init) could not exec the command."""
    return b"[FATAL tini (" in stderr and b"exec " in stderr and b" failed: " in stderr


def answer_after_removal(
    ended: Ended, left: str | None, fate: str | None, *, name: str, backend: str
) -> Result[RunResult, SandboxError]:
    """The run's answer, now that its container is removed (`left` None), or is known not
    to be (`left`: why; `fate`: what became of its processes, when they were stopped from
    this host)."""
    answer = ended.answer
    if left is None:
        return answer
    if isinstance(answer, Success):  # the command ended: only its container is left
        note = (
            f"container {name} could not be removed ({left}); it is removed by the "
            "next run, at close or at exit"
        )
        result = answer.unwrap()
        return Success(attrs.evolve(result, warnings=(*result.warnings, note)))
    error = answer.failure()
    if isinstance(error, EngineLost):
        return Failure(attrs.evolve(error, reason=f"{error.reason}; {fate or left}"))
    if ended.over:
        return answer
    partial = partial_result(error) or ended.partial
    if partial is None:
        return answer
    reason = f"{error.message}; then its container could not be removed ({left}); {fate}"
    return Failure(EngineLost(backend=backend, reason=reason, partial=partial))
