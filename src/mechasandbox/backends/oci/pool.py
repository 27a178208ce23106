"""A warm pool of pre-started containers: commands run by `exec` instead of `run`.

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

A maintenance thread (its own event loop) starts replacements, removes used containers,
and stops containers idle for longer than `idle_timeout_s`. `close()` removes everything;
it also runs at interpreter exit, and `reap_leftovers` covers pool containers (they carry
the same labels as every other container of ours).
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import functools
import json
import os
import queue
import signal
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

import anyio
import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext, LaunchPlan
from mechasandbox.backends.execute import disarm_after, prepare_run, run_started
from mechasandbox.backends.oci import lifeline
from mechasandbox.backends.oci.compiler import (
    ContainerRun,
    EngineKind,
    Runtime,
    compile_container_args,
    compile_exec_args,
)
from mechasandbox.backends.oci.engine import (
    _LIVE,
    _LIVE_LOCK,
    OciBackend,
    _tail,
    hold_placeholders,
    release_placeholders,
    run_blocking,
)
from mechasandbox.backends.oci.lifeline import Attached, Lifeline
from mechasandbox.backends.oci.policy_mounts import PolicyMounts
from mechasandbox.backends.outcome import classify
from mechasandbox.backends.workspace.guards import GuardSet
from mechasandbox.backends.workspace.workspace_locks import locked_too_long
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    MemoryLimit,
    SandboxError,
    SpawnFailed,
)
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult, Usage
from mechasandbox.limits.cgroup import CgroupEvents
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec

_SIGNAL_BASE = 128
_POLL_S = 0.02
_MAINTENANCE_TICK_S = 0.1
_START_TIMEOUT_S = 60.0
_START_POLL_S = 0.05
_GONE_MARKERS = (b"No such container", b"no such container", b"is not running")


def _exec_failure(outcome: ProcessOutcome) -> bytes | None:
    """The engine's message when `exec` could not start the command (docker writes it to
    stdout, podman to stderr), judged by the first line only."""
    for stream in (outcome.stderr, outcome.stdout):
        first = stream.lstrip().split(b"\n", 1)[0]
        if b"exec failed:" in first and (b"OCI" in first or b"runc" in first or b"crun" in first):
            return first.strip()
    return None


# `podman run --detach` leaves conmon behind to keep the container; the process runner kills
# everything a run leaves behind (its helper is the subreaper), so the container stops.
# Why pooled runs have no allowlist bridge: a keeper container outlives the runs, but each
# run's proxy is a fresh unix socket in its own private directory, and a bind mount cannot
# be added to a running container; the bridge's socat would also have to be started per exec
# and outlive none. Strict allowlist runs are refused; best-effort ones have no network.
POOLED_ALLOWLIST = (
    "not bridged in the warm pool: each run's proxy socket is new, and a running "
    "container cannot get a new mount; use the backend without a pool for allowlist runs "
    "(best-effort runs here have no network at all)"
)
# gVisor applies the container's seccomp profile to its first process only: a command that
# comes in by `exec` runs without it (setuid files, io_uring, unshare all allowed again).
GVISOR_UNSUPPORTED = (
    "the warm pool cannot run under gVisor (runsc): it applies no seccomp filter to the "
    "commands a pool hands in by `exec`; run without pool_size"
)
PODMAN_UNSUPPORTED = (
    "the warm pool needs docker: podman's conmon must outlive `podman run --detach`, and "
    "the process runner kills whatever a run leaves behind"
)


class AfterUse(enum.Enum):
    """What happens to a container after a command ran in it."""

    DISCARD = "discard"  # removed; a fresh one is started in the background
    REUSE = "reuse"  # handed to the next command as it is (state carries over)


class WhenExhausted(enum.Enum):
    """What `run` does when every container of its key is busy and the pool is full."""

    WAIT = "wait"  # wait up to `wait_timeout_s` for one, then PoolExhausted
    FAIL = "fail"  # PoolExhausted at once


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen(kw_only=True)
class PoolSettings:
    """`size`: containers per key (idle + busy + starting), at most; `max_keys`: keys kept
    at once (the least recently used key's idle containers go first); `idle_timeout_s`:
    an idle container is stopped after this long; `health_check_after_s`: a container
    idle for longer is checked (`exec true`) before it is handed out."""

    size: int = attrs.field(default=2, validator=_positive)
    after_use: AfterUse = AfterUse.DISCARD
    when_exhausted: WhenExhausted = WhenExhausted.WAIT
    wait_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    idle_timeout_s: float = attrs.field(default=300.0, validator=_positive)
    health_check_after_s: float = 10.0
    max_keys: int = attrs.field(default=4, validator=_positive)


@attrs.frozen(kw_only=True)
class PoolExhausted(BackendUnavailable):
    """Every container of the key is busy and the pool is at its size."""

    kind: ClassVar[str] = "pool_exhausted"
    size: int = 0
    waited_s: float = 0.0


# -- the container's own cgroup, read from the host (a local engine only) -------------------


@attrs.frozen(kw_only=True)
class _Cgroup:
    """The container's cgroup directories on this host: {controller or "": directory}."""

    directories: tuple[tuple[str, str], ...]

    def _dir(self, controller: str) -> Path | None:
        for name, directory in self.directories:
            if name in (controller, ""):
                return Path(directory)
        return None

    def _read(self, controller: str, filename: str) -> str:
        directory = self._dir(controller)
        if directory is None:
            return ""
        try:
            return (directory / filename).read_text()
        except OSError:
            return ""

    @property
    def v2(self) -> bool:
        return any(name == "" for name, _ in self.directories)

    def cpu_ns(self) -> int:
        if self.v2:
            usec = _field(self._read("", "cpu.stat"), "usage_usec")
            return usec * 1000
        text = self._read("cpuacct", "cpuacct.usage").strip()
        return int(text) if text.isdigit() else 0

    def memory_peak(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        text = self._read("memory", name).strip()
        return int(text) if text.isdigit() else 0

    def reset_memory_peak(self) -> None:
        directory = self._dir("memory")
        if directory is not None and not self.v2:
            with contextlib.suppress(OSError):
                (directory / "memory.max_usage_in_bytes").write_text("0")

    def events(self) -> CgroupEvents:
        memory = "memory.events" if self.v2 else "memory.oom_control"
        return CgroupEvents(
            oom_kills=_field(self._read("memory", memory), "oom_kill"),
            pids_max_hits=_field(self._read("pids", "pids.events"), "max"),
        )


def _field(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _cgroup_of(pid: int) -> _Cgroup | None:
    """Where the process `pid` (the container's init, on this host) is accounted."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    found: list[tuple[str, str]] = []
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if controllers == "":
            for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                candidate = root + path
                if os.path.exists(candidate + "/cgroup.procs") and os.path.exists(
                    root + "/cgroup.controllers"
                ):
                    found.append(("", candidate))
                    break
            continue
        for controller in controllers.split(","):
            if controller in ("memory", "pids", "cpuacct"):
                candidate = f"/sys/fs/cgroup/{controller}{path}"
                if os.path.isdir(candidate):
                    found.append((controller, candidate))
    v1 = [item for item in found if item[0]]
    return _Cgroup(directories=tuple(v1 or found)) if found else None


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
    cgroup: _Cgroup | None = None
    uses: int = 0

    @property
    def name(self) -> str:
        return self.run.name


@attrs.define(eq=False)
class _Slot:
    """The containers of one key, and how to make another."""

    key: tuple[str, ...]
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


_POOLS: weakref.WeakSet[ContainerPool] = weakref.WeakSet()


def _close_pools_at_exit() -> None:
    for pool in list(_POOLS):
        with contextlib.suppress(Exception):
            pool.close()


atexit.register(_close_pools_at_exit)


class ContainerPool:
    """The containers of one `PooledBackend` (see the module's doc)."""

    def __init__(self, backend: OciBackend, settings: PoolSettings) -> None:
        self.backend = backend
        self.settings = settings
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, ...], _Slot] = {}
        self._jobs: queue.SimpleQueue[Callable[[], Coroutine[Any, Any, None]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._members: dict[str, _Member] = {}  # every container made and not yet removed
        self._stopped = threading.Event()
        _POOLS.add(self)

    # -- the maintenance thread ----------------------------------------------------------

    def _submit(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=lambda: anyio.run(self._maintain),
                    name="mechasandbox-pool",
                    daemon=True,
                )
                self._thread.start()
            closed = self._closed
        if closed:
            # No maintenance thread any more: do it now, on a thread of its own.
            thread = threading.Thread(target=anyio.run, args=(job,), daemon=True)
            thread.start()
            thread.join(timeout=_START_TIMEOUT_S)
            return
        self._jobs.put(job)

    async def _maintain(self) -> None:
        async with anyio.create_task_group() as group:
            while not self._stopped.is_set():
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    group.start_soon(job)
                self._expire_idle(group)
                await anyio.sleep(_MAINTENANCE_TICK_S)
            # Closing: jobs under way finish (a start cut short could leave a container the
            # engine creates after our `rm`); a start that ends after close removes its own.

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

    def _executable(self) -> str:
        return self.backend._engine().unwrap()[2]

    def _remove_args(self, name: str) -> tuple[str, ...]:
        if self.backend._traits().kind is EngineKind.PODMAN:
            return ("rm", "--force", "--time", "0", name)
        return ("rm", "--force", name)

    async def _remove(self, member: _Member) -> None:
        executable = self._executable()
        with anyio.CancelScope(shield=True):
            removed = await self.backend.runner.run(
                self.backend._cli_spec(executable, self._remove_args(member.name))
            )
        if _gone(removed):
            self._forget(member)
        # Otherwise it stays known: `close` and the exit handler remove it again.

    def _forget(self, member: _Member) -> None:
        with self._lock:
            known = self._members.pop(member.name, None)
        with _LIVE_LOCK:
            _LIVE.pop(member.name, None)
        if known is not None:
            member.guards.close()
            release_placeholders(member.run.workspace, member.placeholders)

    async def _start(self, slot: _Slot) -> Result[_Member, SandboxError]:
        """Create and start one container of `slot` and check it answers an `exec`."""
        backend = self.backend
        executable = self._executable()
        run = slot.make_run()
        placeholders = backend._placeholder_paths(run)
        if not hold_placeholders(run.workspace, placeholders):
            return Failure(BackendFailed(backend=backend.name, reason=locked_too_long("container")))
        with _LIVE_LOCK:
            _LIVE[run.name] = (backend.runner, executable, backend._cli_env())
        member = _Member(
            run=run,
            placeholders=placeholders,
            created=time.monotonic(),
            last_used=0.0,
            guards=backend._guards(run),
        )
        with self._lock:
            self._members[member.name] = member
        ok = False
        try:
            spec = backend._cli_spec(executable, slot.compile(run), timeout_s=_START_TIMEOUT_S)
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
                    await backend._remove(executable, run, thorough=True)
                self._forget(member)

    async def _start_detached(self, member: _Member, spec: SpawnSpec) -> str | None:
        """An untied keeper (`run --detach`): started once the CLI returns."""
        started = await self.backend.runner.run(spec)
        if isinstance(started, Failure):
            return str(started.failure().message)
        if started.unwrap().exit_code != 0:
            return f"cannot start a pool container: {_tail(started.unwrap().stderr)}"
        if not await self._healthy(member):
            return "a new pool container is unhealthy"
        return None

    async def _start_attached(self, member: _Member, spec: SpawnSpec) -> str | None:
        """A keeper tied to this process (see `lifeline`): its CLI stays attached, in a
        thread of its own, for as long as the container lives; started once it answers an
        `exec`."""
        removal = (self._executable(), *self._remove_args(member.name))
        attached = Attached(
            self.backend.runner.run,
            lifeline.tie(attrs.evolve(spec, timeout_s=None), removal=removal),
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not attached.done():
            if await self._healthy(member):
                return None
            if time.monotonic() > deadline:
                return "a new pool container did not start in time"
            await anyio.sleep(_START_POLL_S)
        return f"cannot start a pool container: {attached.failure_reason()}"

    async def _healthy(self, member: _Member) -> bool:
        spec = self.backend._cli_spec(
            self._executable(), ("exec", member.name, "true"), timeout_s=20.0
        )
        checked = await self.backend.runner.run(spec)
        return isinstance(checked, Success) and checked.unwrap().exit_code == 0

    async def _find_cgroup(self, member: _Member) -> _Cgroup | None:
        env = dict(self.backend.host.env)
        if any(env.get(name) for name in ("DOCKER_HOST", "CONTAINER_HOST", "DOCKER_CONTEXT")):
            return None  # a remote engine: its cgroups are not ours to read
        inspected = await self.backend.runner.run(
            self.backend._cli_spec(
                self._executable(), ("inspect", "--format", "{{.State.Pid}}", member.name)
            )
        )
        if isinstance(inspected, Failure) or inspected.unwrap().exit_code != 0:
            return None
        text = inspected.unwrap().stdout.decode().strip()
        return _cgroup_of(int(text)) if text.isdigit() and int(text) > 0 else None

    # -- slots ---------------------------------------------------------------------------

    def _slot(
        self, request: RunRequest, policy: Policy, workspace: str, mounts: PolicyMounts
    ) -> _Slot:
        backend = self.backend
        traits = backend._traits()
        layout = backend._protection_layout(workspace, policy)

        tied = backend._engine().map(lambda found: found[1].shell).value_or(False)

        def make_run() -> ContainerRun:
            run = backend._container_run(workspace, policy, layout=layout, mounts=mounts)
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
        key = (self._executable(), *compile_args(sample))
        now = time.monotonic()
        evicted: list[_Member] = []
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = _Slot(key=key, make_run=make_run, compile=compile_args)
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
            missing = self.settings.size - slot.total
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
                if slot.idle:
                    member = slot.idle.pop()
                    slot.busy.add(member)
                elif slot.total < settings.size:
                    slot.starting += 1
                    start_here = True
            if member is not None:
                if member.guards.lost():  # its mounts no longer cover what they did
                    self._discard(slot, member)
                    continue
                stale = time.monotonic() - member.last_used > settings.health_check_after_s
                if stale and not await self._healthy(member):
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
                            f"policy are busy (waited {waited:.1f}s)"
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
        member.uses += 1
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

    def warm(
        self, request: RunRequest, policy: Policy, workspace: str, mounts: PolicyMounts
    ) -> None:
        """Start `size` containers for this key in the background, before the first run."""
        self._replenish(self._slot(request, policy, workspace, mounts))

    async def run(
        self,
        request: RunRequest,
        policy: Policy,
        workspace: str,
        warnings: tuple[str, ...],
        mounts: PolicyMounts,
    ) -> Result[RunResult, SandboxError]:
        made = self.backend._env_file(policy, self.backend.host)
        if isinstance(made, Failure):
            return Failure(made.failure())
        slot = self._slot(request, policy, workspace, mounts)
        acquired = await self._acquire(slot)
        if isinstance(acquired, Failure):
            return Failure(acquired.failure())
        member = acquired.unwrap()
        backend = self.backend
        executable = self._executable()
        args = compile_exec_args(
            request, policy, backend.host, container=member.name, workspace=workspace
        )
        spec = backend._cli_spec(
            executable,
            args,
            stdin=request.stdin,
            timeout_s=policy.limits.timeout_s,
            max_output_bytes=policy.limits.max_output_bytes,
            env_file=made.unwrap(),
        )
        cgroup = member.cgroup
        before = (cgroup.cpu_ns(), cgroup.events()) if cgroup is not None else None
        if cgroup is not None:
            cgroup.reset_memory_peak()
        reusable = False
        killed = True
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
            killed = False
            concluded = await self._conclude(request, policy, outcome, warnings, member, before)
            reusable = isinstance(concluded, Success) and concluded.unwrap().signal is None
            return concluded
        finally:
            if killed:
                with anyio.CancelScope(shield=True):
                    await self._kill(member)
            self._give_back(slot, member, reusable=reusable and not killed)

    async def _kill(self, member: _Member) -> None:
        """Force-remove now (the timeout or cancel path): nothing the command started survives."""
        with anyio.CancelScope(shield=True):
            await self.backend.runner.run(
                self.backend._cli_spec(self._executable(), self._remove_args(member.name))
            )

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
        return RunResult(
            backend=self.backend.name,
            exit_code=code,
            signal=sig,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            stdout_truncated=outcome.stdout_truncated,
            stderr_truncated=outcome.stderr_truncated,
            duration_s=outcome.duration_s,
            usage=usage,
            warnings=warnings,
        )

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
        code: int | None = status
        sig: int | None = outcome.signal
        if code is not None and _SIGNAL_BASE < code <= _SIGNAL_BASE + 64:
            sig, code = code - _SIGNAL_BASE, None
        result = self._result(outcome, warnings, member, before, code=code, sig=sig)
        failure = _exec_failure(outcome)
        if status in (126, 127) and failure is not None:
            reason = "command not found" if b"not found" in failure else "not executable"
            return Failure(
                SpawnFailed(
                    command=request.argv[0],
                    reason=f"{reason} in image {backend.image!r}: {_tail(failure, 200)}",
                    exit_status=127 if reason == "command not found" else 126,
                )
            )
        gone = status not in (0, None) and any(m in outcome.stderr for m in _GONE_MARKERS)
        if gone and not await self._healthy(member):
            reason = f"the pool container went away: {_tail(outcome.stderr)}"
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
            and await self._oom_killed(member)
        ):
            detail = (
                f"memory limit of {policy.limits.memory_bytes} bytes exceeded; "
                "the command was OOM-killed"
            )
            return Failure(MemoryLimit(detail=detail, partial=result))
        return classify(result, limits=policy.limits, timed_out=False, events=events)

    async def _oom_killed(self, member: _Member) -> bool:
        """Without the cgroup: the engine's OOMKilled flag (set when the keeper died too)."""
        inspected = await self.backend.runner.run(
            self.backend._cli_spec(
                self._executable(), ("inspect", "--format", "{{json .State}}", member.name)
            )
        )
        if isinstance(inspected, Failure) or inspected.unwrap().exit_code != 0:
            return False
        try:
            state = json.loads(inspected.unwrap().stdout)
        except ValueError:
            return False
        return isinstance(state, dict) and bool(state.get("OOMKilled"))

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
            }

    def close(self) -> None:
        """Remove every container of the pool (idle or busy) and stop its thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._slots.clear()
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=_START_TIMEOUT_S + 5)
        engine = self.backend._engine()
        if isinstance(engine, Failure):
            return
        executable = engine.unwrap()[2]
        with self._lock:
            members = list(self._members.values())
        for member in members:
            removed: Result[ProcessOutcome, SpawnFailed] | None = None
            with contextlib.suppress(Exception):
                removed = run_blocking(
                    self.backend.runner,
                    self.backend._cli_spec(executable, self._remove_args(member.name)),
                )
            if removed is not None and _gone(removed):
                self._forget(member)  # else the exit handler tries once more


def _gone(removed: Result[ProcessOutcome, SpawnFailed]) -> bool:
    """Whether an `rm --force` left the engine without the container: it succeeded, or
    there was none. A container is forgotten only then: a removal that failed (the engine
    busy, the CLI cut short) would otherwise leave it running with nobody to remove it."""
    if isinstance(removed, Failure):
        return False
    outcome = removed.unwrap()
    return outcome.exit_code == 0 or b"no such container" in outcome.stderr.lower()


@attrs.frozen(kw_only=True)
class PooledBackend:
    """A docker/podman backend whose commands run in warm containers (see the module)."""

    backend: OciBackend
    settings: PoolSettings = PoolSettings()
    _pool: ContainerPool = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_pool", ContainerPool(self.backend, self.settings))

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def pool(self) -> ContainerPool:
        return self._pool

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        if self.backend.kind == "podman":
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
                        "created as above with `--detach` running `sleep infinity`, the "
                        "command then runs by `exec`",
                    ),
                ),
            )
        )

    def warm(self, request: RunRequest, policy: Policy) -> Result[None, SandboxError]:
        """Pre-start the pool for the request's workspace and this policy."""
        prepared = prepare_run(self, request, policy)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        _warnings, workspace, protected = prepared.unwrap()
        mounts = self.backend._policy_mounts(workspace, protected, self.backend.host)
        if isinstance(mounts, Failure):
            return Failure(mounts.failure())
        self._pool.warm(request, protected, workspace, mounts.unwrap())
        return Success(None)

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        engine = self.backend._engine()
        if isinstance(engine, Failure):
            return await self._run(request, policy)  # (prepare_run reports it)
        key = (self.backend.kind, engine.unwrap()[2])
        return await lifeline.sweep_beside(
            key,
            self.backend.reap_leftovers,
            lambda: self._run(request, policy),
            concurrently=engine.unwrap()[1].traits.kind is not EngineKind.PODMAN,
        )

    async def _run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        backend = self.backend
        prepared = prepare_run(self, request, policy)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        warnings, workspace, policy = prepared.unwrap()
        mountable = backend._check_mountable(workspace)
        if isinstance(mountable, Failure):
            return Failure(mountable.failure())
        layout = backend._protection_layout(workspace, policy)
        checked = backend._check_protection(layout, policy)
        if isinstance(checked, Failure):
            return Failure(checked.failure())
        mounts = backend._policy_mounts(workspace, policy, backend.host)
        if isinstance(mounts, Failure):
            return Failure(mounts.failure())
        warnings = (*warnings, *checked.unwrap())
        started = run_started()
        ran = await self._pool.run(request, policy, workspace, warnings, mounts.unwrap())
        return disarm_after(ran, workspace, policy, started)

    async def reap_leftovers(
        self, *, include_live: bool = False
    ) -> Result[tuple[str, ...], SandboxError]:
        return await self.backend.reap_leftovers(include_live=include_live)

    def close(self) -> None:
        self._pool.close()
