"""The containers of one warm pool: keys, members, the maintenance thread (see `pool`).

A member is a ready session (`session.start_oci_session`) where the runner can start the
session agent, which kills each command's whole tree before the run returns: closed after
one command (`AfterUse.DISCARD`) or handed to the next command of its key (`REUSE`);
otherwise a keeper container taking each command by `exec` (`DISCARD` only: see
`pool_settings.REUSE_NEEDS_AGENT`).
(Over 600 lines: keys, members, their lifecycle and the two ways of running share one lock
and one set of counters; split, each half would reach into the other's state.)
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import time
from collections.abc import Awaitable, Callable

import anyio
import attrs
from anyio.from_thread import start_blocking_portal
from returns.result import Failure, Result, Success

from mechasandbox.backends.agent_process import session_agent
from mechasandbox.backends.agent_session import AgentSession
from mechasandbox.backends.execute import disarm_after, run_started
from mechasandbox.backends.oci import lifeline, live, protection
from mechasandbox.backends.oci.cli import EngineCli, exit_status, gone, remote_engine, tail
from mechasandbox.backends.oci.compiler import (
    ContainerRun,
    compile_container_args,
    compile_exec_args,
)
from mechasandbox.backends.oci.engine import OciBackend
from mechasandbox.backends.oci.lifeline import Attached, Lifeline
from mechasandbox.backends.oci.policy_mounts import PolicyMounts
from mechasandbox.backends.oci.pool_engine import PoolEngine
from mechasandbox.backends.oci.pool_settings import (
    AfterUse,
    PoolExhausted,
    PoolSettings,
    WhenExhausted,
)
from mechasandbox.backends.oci.portal import Portal
from mechasandbox.backends.oci.session import OciSessionSandbox, start_oci_session
from mechasandbox.backends.outcome import classify, run_result
from mechasandbox.backends.session_base import SessionSettings
from mechasandbox.backends.workspace.guards import GuardSet
from mechasandbox.backends.workspace.placeholders import FileContents
from mechasandbox.backends.workspace.workspace_locks import locked_too_long
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    MemoryLimit,
    SandboxError,
    SpawnFailed,
)
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest, piped
from mechasandbox.domain.result import RunResult, Usage
from mechasandbox.limits.cgroup import CgroupEvents, ProcessCgroup
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec

_POLL_S = 0.02
# How long a used container's removal waits for the starts under way (`_after_starts`).
_REMOVAL_DELAY_S = 3.0
_MAINTENANCE_TICK_S = 0.1
_START_TIMEOUT_S = 60.0
_START_POLL_S = 0.05
_START_POLL_API_S = 0.01  # an `inspect` on the socket costs 0.3 ms, an `exec` 50 ms
_GONE_MARKERS = (b"No such container", b"no such container", b"is not running")
# The agent of a ready session outlives the pool's idle timeout by this much: the pool,
# not the agent, ends an idle one.
_AGENT_IDLE_MARGIN_S = 60.0


def _exec_failure(outcome: ProcessOutcome) -> bytes | None:
    """The engine's message when `exec` could not start the command (docker writes it to
    stdout, podman to stderr), judged by the first line only."""
    for stream in (outcome.stderr, outcome.stdout):
        first = stream.lstrip().split(b"\n", 1)[0]
        if b"exec failed:" in first and (b"OCI" in first or b"runc" in first or b"crun" in first):
            return first.strip()
    return None


# -- pool members and keys ------------------------------------------------------------------


@attrs.define(eq=False)
class _Member:
    run: ContainerRun
    placeholders: tuple[str, ...]
    created: float
    last_used: float
    # The host paths its protection mounts stand on, held from before it was created: one
    # replaced since took its mount off in this container (see `linux.guards`).
    guards: GuardSet = attrs.field(factory=lambda: GuardSet(()))
    cgroup: ProcessCgroup | None = None
    session: AgentSession | None = None  # a ready session (see the module)

    @property
    def ended(self) -> bool:
        """A session whose agent is gone (its container removed, its channel closed)."""
        return self.session is not None and self.session.ended is not None

    @property
    def name(self) -> str:
        return self.run.name


@attrs.define(eq=False)
class _Slot:
    """The containers of one key, and how to make another."""

    key: tuple[str, ...]
    policy: Policy
    make_run: Callable[[], ContainerRun]
    compile: Callable[[ContainerRun], tuple[str, ...]]
    idle: list[_Member] = attrs.field(factory=list)
    busy: set[_Member] = attrs.field(factory=set)
    starting: int = 0
    last_used: float = 0.0
    retired: bool = False

    @property
    def total(self) -> int:
        return len(self.idle) + len(self.busy) + self.starting

    def held(self, after_use: AfterUse) -> int:
        """The containers the size bound counts before starting more: all of them when
        used ones come back; when they are discarded, those ready or starting (one taken
        for a run is replaced at once: see `ContainerPool._acquire`)."""
        if after_use is AfterUse.REUSE:
            return self.total
        return len(self.idle) + self.starting


class ContainerPool:
    """The containers of one `PooledBackend` (see the module's doc)."""

    def __init__(self, backend: OciBackend, settings: PoolSettings) -> None:
        self.backend = backend
        self.settings = settings
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, ...], _Slot] = {}
        # Starts, removals and the idle timeout run in the background, on a loop of their own.
        self._maintenance = Portal("mechasandbox-pool", background=self._expire)
        self._closed = False
        self._members: dict[str, _Member] = {}  # every container made and not yet removed
        self._removing = 0  # removals under way (or waiting for the starts: `_after_starts`)
        self._waiting = 0  # removals waiting for the starts (`size` at most)
        self.engine = PoolEngine(backend)
        # Runs on ready sessions (see the module).
        self.sessions = isinstance(session_agent(backend.name, backend.runner), Success)

    # -- maintenance -----------------------------------------------------------------------

    def _submit(self, job: Callable[[], Awaitable[None]]) -> None:
        with self._lock:
            closed = self._closed
        if closed:
            # No maintenance any more: do it now, on a loop of its own.
            with start_blocking_portal(name="mechasandbox-pool-closed") as portal:
                portal.call(job)
            return
        self._maintenance.start_soon(job)

    async def _expire(self, stopping: threading.Event) -> None:
        """Stop the containers idle for too long, until the pool closes. (Its jobs under
        way finish then: a start cut short could leave a container the engine creates after
        our `rm`; a start that ends after close removes its own.)"""
        async with anyio.create_task_group() as group:
            while not (stopping.is_set() or self._closed):
                self._expire_idle(group)
                await anyio.sleep(_MAINTENANCE_TICK_S)

    def _expire_idle(self, group: anyio.abc.TaskGroup) -> None:
        now = time.monotonic()
        doomed: list[_Member] = []
        with self._lock:
            for key, slot in list(self._slots.items()):
                timeout = self.settings.idle_timeout_s
                keep = [m for m in slot.idle if now - m.last_used < timeout]
                doomed += [m for m in slot.idle if m not in keep]
                slot.idle = keep
                if slot.total == 0 and (slot.retired or now - slot.last_used >= timeout):
                    del self._slots[key]
        for member in doomed:
            group.start_soon(self._remove, member)

    # -- engine calls --------------------------------------------------------------------

    def _cli(self) -> EngineCli:
        return self.engine.cli()

    async def _remove(self, member: _Member) -> None:
        with self._lock:
            self._removing += 1
        try:
            if member.session is not None:
                # Used: its command's tree is dead (the agent killed it); only the agent
                # waits in it. Ready ones are needed first: on 2 cores a removal (~50 ms
                # of the engine's CPU) beside a start slows the start that a run waits for.
                await self._after_starts()
                await member.session.aclose()  # its agent ends, its container is removed
                sandbox = member.session.sandbox
                removed = isinstance(sandbox, OciSessionSandbox) and sandbox.removed
            else:
                removed = await self.engine.remove(member.name)
        finally:
            with self._lock:
                self._removing -= 1
        if removed:
            self._forget(member)
        # Otherwise it stays known: `close` and the exit handler remove it again.

    async def _after_starts(self) -> None:
        """Wait (`_REMOVAL_DELAY_S` at most) until no container of the pool is starting
        (none once it is closed: `close` clears the keys). At most `size` removals wait:
        under a steady load a start is always under way, and used containers would pile up;
        beyond those the removal goes at once."""
        with self._lock:
            if self._waiting >= self.settings.size:
                return
            self._waiting += 1
        try:
            waited = 0.0
            while waited < _REMOVAL_DELAY_S:
                with self._lock:
                    starting = any(slot.starting for slot in self._slots.values())
                if not starting:
                    return
                await anyio.sleep(_POLL_S)
                waited += _POLL_S
        finally:
            with self._lock:
                self._waiting -= 1

    def _forget(self, member: _Member) -> None:
        with self._lock:
            known = self._members.pop(member.name, None)
        self.backend.state.live.discard(member.name)
        if known is not None:
            member.guards.close()
            self.backend.state.placeholders.release(member.run.workspace, member.placeholders)

    async def _start(self, slot: _Slot) -> Result[_Member, SandboxError]:
        """Create and start one container of `slot` and check it answers an `exec`."""
        backend = self.backend
        cli = self._cli()
        run = slot.make_run()
        placeholders = protection.placeholder_paths(run)
        if not backend.state.placeholders.hold(run.workspace, placeholders, run.file_placeholders):
            return Failure(BackendFailed(backend=backend.name, reason=locked_too_long("container")))
        backend.state.live.add(run.name, cli)
        member = _Member(
            run=run,
            placeholders=placeholders,
            created=time.monotonic(),
            last_used=0.0,
            guards=protection.guards(run),
        )
        with self._lock:
            self._members[member.name] = member
        ok = False
        try:
            if self.sessions:
                opened = await self._start_session(slot, member)
                if isinstance(opened, Failure):
                    return Failure(opened.failure())
                member.session = opened.unwrap()
            else:
                spec = cli.spec(slot.compile(run), timeout_s=_START_TIMEOUT_S)
                problem = await (
                    self._start_detached(member, spec)
                    if run.lifeline is None
                    else self._start_attached(member, spec)
                )
                if problem is not None:
                    return Failure(BackendFailed(backend=backend.name, reason=problem))
                member.cgroup = await self._find_cgroup(member)
            member.last_used = time.monotonic()
            ok = True
            return Success(member)
        finally:
            if not ok:
                with anyio.CancelScope(shield=True):
                    # The CLI may have been cut short while the engine was still creating it.
                    await live.remove(cli, run.name, run.run_id, thorough=True)
                self._forget(member)

    async def _start_session(
        self, slot: _Slot, member: _Member
    ) -> Result[AgentSession, SandboxError]:
        """A session agent as the container's process: the pool holds its placeholders and
        counts it live (`registered=False`); no lifetime but the command's own timeout."""
        settings = SessionSettings(
            idle_timeout_s=self.settings.idle_timeout_s + _AGENT_IDLE_MARGIN_S,
            max_lifetime_s=None,
        )
        api = await self.engine.api()
        return await start_oci_session(
            self.backend, member.run, slot.policy, settings, warnings=(), api=api, registered=False
        )

    async def _start_detached(self, member: _Member, spec: SpawnSpec) -> str | None:
        """An untied keeper (`run --detach`): started once the CLI returns."""
        started = await self.backend.runner.run(spec)
        if isinstance(started, Failure):
            return str(started.failure().message)
        if started.unwrap().exit_code != 0:
            return f"cannot start a pool container: {tail(started.unwrap().stderr)}"
        if not await self.engine.running(member.name):
            return "a new pool container is unhealthy"
        return None

    async def _start_attached(self, member: _Member, spec: SpawnSpec) -> str | None:
        """A keeper tied to this process (see `lifeline`): its CLI stays attached, in a
        thread of its own, for as long as the container lives; started once it answers an
        `exec`."""
        removal = (self._cli().executable, *self.backend._remove_args(member.name))
        attached = Attached(
            self.backend.runner.run,
            lifeline.tie(attrs.evolve(spec, timeout_s=None), removal=removal),
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        poll = _START_POLL_API_S if await self.engine.api() is not None else _START_POLL_S
        while not attached.done():
            if await self.engine.running(member.name):
                return None
            if time.monotonic() > deadline:
                return "a new pool container did not start in time"
            await anyio.sleep(poll)
        return f"cannot start a pool container: {attached.failure_reason()}"

    async def _find_cgroup(self, member: _Member) -> ProcessCgroup | None:
        if remote_engine(self.backend.host):
            return None  # its cgroups are not ours to read
        pid = await self.engine.pid(member.name)
        return ProcessCgroup.of(pid) if pid is not None else None

    # -- slots ---------------------------------------------------------------------------

    def slot(
        self,
        request: RunRequest,
        policy: Policy,
        workspace: str,
        mounts: PolicyMounts,
        files: FileContents,
    ) -> _Slot:
        """Where a run with these goes: the containers started alike (see `_Slot`)."""
        backend = self.backend
        traits = backend._traits()
        layout = backend._protection_layout(workspace, policy)

        tied = not self.sessions and backend._engine().map(lambda f: f[1].shell).value_or(False)

        def make_run() -> ContainerRun:
            run = backend._container_run(
                workspace, policy, layout=layout, mounts=mounts, file_placeholders=files
            )
            return attrs.evolve(run, lifeline=Lifeline()) if tied else run

        def compile_args(run: ContainerRun) -> tuple[str, ...]:
            return compile_container_args(
                request,
                policy,
                backend.host,
                backend.image,
                backend.runtime,
                traits,
                run=run,
                cpus=backend.cpus,
                keeper=True,
            )

        # The key: the creation arguments with this container's own name and labels left out.
        sample = attrs.evolve(make_run(), run_id="KEY", owner="KEY")
        key = (self._cli().executable, *compile_args(sample))
        now = time.monotonic()
        evicted: list[_Member] = []
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = _Slot(key=key, policy=policy, make_run=make_run, compile=compile_args)
                self._slots[key] = slot
                evicted = self._evict_keys(keep=slot)
            slot.last_used = now
        for member in evicted:
            self._submit(functools.partial(self._remove, member))
        return slot

    def _evict_keys(self, *, keep: _Slot) -> list[_Member]:
        """Beyond `max_keys`: retire the least recently used keys (their idle containers
        now, their busy ones when they come back). Called with the lock held."""
        evicted: list[_Member] = []
        live = [s for s in self._slots.values() if s is not keep and not s.retired]
        excess = len(live) + 1 - self.settings.max_keys
        for slot in sorted(live, key=lambda s: s.last_used)[: max(excess, 0)]:
            slot.retired = True
            evicted += slot.idle
            slot.idle = []
            if slot.total == 0:
                del self._slots[slot.key]
        return evicted

    def _replenish(self, slot: _Slot) -> None:
        """Start containers in the background until the slot has `size` of them."""
        with self._lock:
            if self._closed or slot.retired:
                return
            missing = self.settings.size - slot.held(self.settings.after_use)
            slot.starting += max(missing, 0)
        for _ in range(max(missing, 0)):
            self._submit(lambda: self._start_into(slot))

    async def _start_into(self, slot: _Slot) -> None:
        started = await self._start(slot)
        with self._lock:
            slot.starting -= 1
            if isinstance(started, Success) and not (self._closed or slot.retired):
                slot.idle.append(started.unwrap())
                return
        if isinstance(started, Success):
            await self._remove(started.unwrap())

    async def _acquire(self, slot: _Slot) -> Result[_Member, SandboxError]:
        settings = self.settings
        began = time.monotonic()
        while True:
            member: _Member | None = None
            start_here = False
            with self._lock:
                if self._closed:
                    return Failure(
                        BackendUnavailable(backend=self.backend.name, reason="the pool is closed")
                    )
                slot.last_used = time.monotonic()
                # At most `size` in use at once. Discarded after use, a member taken is
                # replaced at once (`_replenish` counts those ready or starting), so that
                # back-to-back runs find the next one started while they ran: the key holds
                # at most `size` in use and `size` ready or starting.
                room = len(slot.busy) < settings.size
                if room and slot.idle:
                    member = slot.idle.pop()
                    slot.busy.add(member)
                elif room and slot.held(settings.after_use) < settings.size:
                    slot.starting += 1
                    start_here = True
            if member is not None:
                # Its mounts no longer cover what they did, or its session's agent is gone,
                # or it is older than the settings let one be handed out.
                too_old = time.monotonic() - member.created > settings.max_age_s
                if member.guards.lost() or member.ended or too_old:
                    self._discard(slot, member)
                    continue
                stale = time.monotonic() - member.last_used > settings.health_check_after_s
                if stale and not await self.engine.running(member.name):
                    self._discard(slot, member)
                    continue
                self._replenish(slot)
                return Success(member)
            if start_here:
                # Nothing warm: this caller pays for one start; the rest come in the background.
                started = await self._start(slot)
                with self._lock:
                    slot.starting -= 1
                    if isinstance(started, Success):
                        slot.busy.add(started.unwrap())
                if isinstance(started, Success):
                    self._replenish(slot)
                return started
            waited = time.monotonic() - began
            if settings.when_exhausted is WhenExhausted.FAIL or waited >= settings.wait_timeout_s:
                return Failure(
                    PoolExhausted(
                        backend=self.backend.name,
                        reason=(
                            f"all {settings.size} pool containers for this workspace and "
                            f"policy are busy or starting (waited {waited:.1f}s)"
                        ),
                        size=settings.size,
                        waited_s=waited,
                    )
                )
            await anyio.sleep(_POLL_S)

    def _discard(self, slot: _Slot, member: _Member) -> None:
        """Remove `member` in the background and start a replacement."""
        with self._lock:
            slot.busy.discard(member)
        self._submit(lambda: self._remove(member))
        self._replenish(slot)

    def _give_back(self, slot: _Slot, member: _Member, *, reusable: bool) -> None:
        member.last_used = time.monotonic()
        if reusable and self.settings.after_use is AfterUse.REUSE:
            with self._lock:
                slot.busy.discard(member)
                if not (self._closed or slot.retired):
                    slot.idle.append(member)
                    return
            self._submit(lambda: self._remove(member))
            return
        self._discard(slot, member)

    # -- running -------------------------------------------------------------------------

    def warm(self, slot: _Slot) -> None:
        """Start `size` containers for `slot` (see `slot`) in the background, before the
        first run."""
        self._replenish(slot)

    async def run(
        self,
        request: RunRequest,
        policy: Policy,
        workspace: str,
        warnings: tuple[str, ...],
        mounts: PolicyMounts,
        files: FileContents,
    ) -> Result[RunResult, SandboxError]:
        """The command on a member of its key; the repositories it made that would run
        code on the host disarmed after it (see `execute.disarm_after`: a session's own
        `finished` does so, from when it opened)."""
        made = self.backend._env_file(policy, self.backend.host)
        if isinstance(made, Failure):
            return Failure(made.failure())
        started = run_started()
        slot = self.slot(request, policy, workspace, mounts, files)
        acquired = await self._acquire(slot)
        if isinstance(acquired, Failure):
            return Failure(acquired.failure())
        member = acquired.unwrap()
        if member.session is not None:
            return await self._run_session(slot, member, request, warnings)
        ran = await self._run_keeper(
            slot, member, request, policy, workspace, warnings, made.unwrap()
        )
        return disarm_after(ran, workspace, policy, started, self.backend.git)

    async def _run_keeper(
        self,
        slot: _Slot,
        member: _Member,
        request: RunRequest,
        policy: Policy,
        workspace: str,
        warnings: tuple[str, ...],
        env_file: bytes,
    ) -> Result[RunResult, SandboxError]:
        """The command by `exec` in `member`, a keeper's container."""
        backend = self.backend
        args = compile_exec_args(
            request, policy, backend.host, container=member.name, workspace=workspace
        )
        spec = self._cli().spec(
            args,
            stdin=piped(request.stdin),
            timeout_s=policy.limits.timeout_s,
            max_output_bytes=policy.limits.max_output_bytes,
            env_file=env_file,
            on_output=request.on_output,
        )
        cgroup = member.cgroup
        before = (cgroup.cpu_ns(), cgroup.events()) if cgroup is not None else None
        if cgroup is not None:
            cgroup.reset_memory_peak()
        try:
            launched = await backend.runner.run(attrs.evolve(spec, watch=member.guards.watcher()))
            if isinstance(launched, Failure):
                return Failure(
                    BackendFailed(backend=backend.name, reason=launched.failure().message)
                )
            outcome = launched.unwrap()
            if outcome.stopped is not None:  # a guard came off: the container goes
                return Failure(
                    BackendFailed(backend=backend.name, reason=f"stopped: {outcome.stopped}")
                )
            if outcome.timed_out:
                # `exec` has no kill: the container goes (in the finally, before we return),
                # with everything the command started.
                result = self._result(outcome, warnings, member, before, code=None, sig=None)
                return classify(result, limits=policy.limits, timed_out=True)
            return await self._conclude(request, policy, outcome, warnings, member, before)
        finally:
            # A keeper is never reused (`pool_settings.REUSE_NEEDS_AGENT`), and goes before
            # the disarm after the run (`run`): what the command left running in it could
            # arm a repository of the workspace after that look.
            with anyio.CancelScope(shield=True):
                await self._kill(member)
            self._give_back(slot, member, reusable=False)

    async def _run_session(
        self, slot: _Slot, member: _Member, request: RunRequest, warnings: tuple[str, ...]
    ) -> Result[RunResult, SandboxError]:
        """The command on `member`'s session. The agent kills the command's whole tree when
        the command ends, times out or is cancelled, before this returns; then the session
        is closed (in the background) and replaced, or, with `REUSE`, after a run that
        ended on its own (not by a signal, a timeout, a cancellation, the session's end),
        handed to the next command of its key with its files as they are."""
        session = member.session
        assert session is not None
        session.warnings = warnings  # this run's, as a keeper's `exec` would report them
        reusable = False
        try:
            ran = await session.run(request)
            reusable = (
                isinstance(ran, Success) and ran.unwrap().signal is None and session.ended is None
            )
            return ran
        finally:
            self._give_back(slot, member, reusable=reusable)

    async def _kill(self, member: _Member) -> None:
        """Force-remove now (the timeout or cancel path): nothing the command started survives."""
        await self.engine.remove(member.name)

    def _result(
        self,
        outcome: ProcessOutcome,
        warnings: tuple[str, ...],
        member: _Member,
        before: tuple[int, CgroupEvents] | None,
        *,
        code: int | None,
        sig: int | None,
    ) -> RunResult:
        usage = Usage()
        cgroup = member.cgroup
        if cgroup is not None and before is not None:
            cpu_ns = max(cgroup.cpu_ns() - before[0], 0)
            usage = Usage(cpu_s=cpu_ns / 1e9, max_rss_bytes=cgroup.memory_peak())
        result = run_result(self.backend.name, outcome, warnings=warnings)
        return attrs.evolve(result, exit_code=code, signal=sig, usage=usage)

    async def _conclude(
        self,
        request: RunRequest,
        policy: Policy,
        outcome: ProcessOutcome,
        warnings: tuple[str, ...],
        member: _Member,
        before: tuple[int, CgroupEvents] | None,
    ) -> Result[RunResult, SandboxError]:
        backend = self.backend
        status = outcome.exit_code
        code, sig = exit_status(status, outcome.signal)
        result = self._result(outcome, warnings, member, before, code=code, sig=sig)
        failure = _exec_failure(outcome)
        if status in (126, 127) and failure is not None:
            reason = "command not found" if b"not found" in failure else "not executable"
            return Failure(
                SpawnFailed(
                    command=request.argv[0],
                    reason=f"{reason} in image {backend.image!r}: {tail(failure, 200)}",
                    exit_status=127 if reason == "command not found" else 126,
                )
            )
        gone = status not in (0, None) and any(m in outcome.stderr for m in _GONE_MARKERS)
        if gone and not await self.engine.running(member.name):
            reason = f"the pool container went away: {tail(outcome.stderr)}"
            return Failure(BackendFailed(backend=backend.name, reason=reason))
        events: CgroupEvents | None = None
        cgroup = member.cgroup
        if cgroup is not None and before is not None:
            after = cgroup.events()
            events = CgroupEvents(
                oom_kills=after.oom_kills - before[1].oom_kills,
                pids_max_hits=after.pids_max_hits - before[1].pids_max_hits,
            )
        elif (
            sig == signal.SIGKILL
            and policy.limits.memory_bytes is not None
            and await self.engine.oom_killed(member.name)
        ):
            detail = (
                f"memory limit of {policy.limits.memory_bytes} bytes exceeded; "
                "the command was OOM-killed"
            )
            return Failure(MemoryLimit(detail=detail, partial=result))
        return classify(result, limits=policy.limits, timed_out=False, events=events)

    # -- shutting down -------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Containers by state, over every key (for tests and diagnostics)."""
        with self._lock:
            slots = list(self._slots.values())
            return {
                "keys": len(slots),
                "idle": sum(len(s.idle) for s in slots),
                "busy": sum(len(s.busy) for s in slots),
                "starting": sum(s.starting for s in slots),
                "removing": self._removing,
                "waiting": self._waiting,
            }

    def close(self) -> None:
        """Remove every container of the pool (idle or busy) and stop its thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = [member for slot in self._slots.values() for member in slot.idle]
            self._slots.clear()
        self._maintenance.close()
        for member in idle:
            if member.session is not None:  # its agent and channel end with it
                with contextlib.suppress(Exception):
                    self.backend.state.portal.call(functools.partial(self._remove, member))
        engine = self.backend._engine()
        if isinstance(engine, Failure):
            return
        cli = self.backend._cli(engine.unwrap()[2])
        with self._lock:
            members = list(self._members.values())
        for member in members:
            removed: Result[ProcessOutcome, SpawnFailed] | None = None
            with contextlib.suppress(Exception):
                spec = cli.spec(self.backend._remove_args(member.name))
                removed = cli.run_blocking(self.backend.state.portal, spec)
            if removed is not None and gone(removed):
                self._forget(member)  # else the exit handler tries once more
