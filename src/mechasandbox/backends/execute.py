"""The run sequence shared by every backend that spawns through the process runner."""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import check_enforcement, check_workspace
from mechasandbox.backends.command_line import exec_problem
from mechasandbox.backends.git_facts import GitFacts
from mechasandbox.backends.git_indirections import with_git_indirections
from mechasandbox.backends.git_new_repositories import disarm_new_repositories
from mechasandbox.backends.outcome import classify, run_result
from mechasandbox.backends.workspace.placeholders import FileContents
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import BackendFailed, ConfigInvalid, SandboxError
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult, Violation
from mechasandbox.limits.cgroup import CgroupEvents, CgroupManager, CgroupRun
from mechasandbox.network.validation import validate_network
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec

if TYPE_CHECKING:
    from mechasandbox.backends.base import Backend


def prepare_run(
    backend: Backend, request: RunRequest, policy: Policy, git: GitFacts | None
) -> Result[_Prepared, SandboxError]:
    """Probe, check the policy against what the backend enforces, check the workspace.

    Gives the warnings to attach (best-effort gaps), the workspace's real path, the policy
    to compile: the given one with the workspace's git indirections protected too (see
    `git_indirections`; read now, just before the run, reusing what `git`, the backend's,
    read before), and the run's file placeholders (`FileContents`). Bad allow/deny
    patterns are a `ConfigInvalid` naming the pattern, before anything starts.
    """
    probed: Result[Capabilities, SandboxError] = backend.probe()
    checked: Result[tuple[str, ...], SandboxError] = probed.bind(
        lambda capabilities: check_enforcement(capabilities, policy)
    )
    network: Result[None, SandboxError] = validate_network(policy.network)
    checked = network.bind(lambda _: checked)
    workspace: Result[str, SandboxError] = check_workspace(request)
    # Only a backend that protects paths has a use for more of them (the search costs).
    enforced = probed.unwrap().enforced if isinstance(probed, Success) else frozenset()
    protects = Protection.PROTECTED_PATHS in enforced

    def prepared(warnings: tuple[str, ...], path: str) -> _Prepared:
        if not protects:
            return warnings, path, policy, ()
        protected, found, files = with_git_indirections(policy, path, facts=git)
        return (*warnings, *found), path, protected, files

    def linked(found: _Prepared) -> Result[_Prepared, SandboxError]:
        if Protection.FILESYSTEM_READ not in enforced:
            return Success(found)
        warnings, path, chosen, files = found
        return denied_links(chosen, path).map(
            lambda more: ((*warnings, *more), path, chosen, files)
        )

    return checked.bind(lambda warnings: workspace.map(lambda path: prepared(warnings, path))).bind(
        linked
    )


_Prepared = tuple[tuple[str, ...], str, Policy, FileContents]


def denied_links(policy: Policy, workspace: str) -> Result[tuple[str, ...], SandboxError]:
    """A `deny_read` file with more than one name (a hard link) may be read by the other
    one: a command can link a denied path's name before the file exists, and the host's
    in-place writes then fill both. Refused in a strict run, a warning in a best-effort one.
    (One `lstat` per entry.)"""
    found: list[str] = []
    for entry in policy.filesystem.deny_read:
        path = os.path.join(workspace, os.path.expanduser(entry))
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
            found.append(f"{path} has {info.st_nlink} names (hard links)")
    if not found:
        return Success(())
    problem = (
        f"denied files reachable by another name: {'; '.join(found)}; remove the other "
        "links (find -samefile) or deny them too"
    )
    if policy.enforcement is Enforcement.STRICT:
        return Failure(ConfigInvalid(problem=problem, field="filesystem.deny_read"))
    return Success((f"not enforced: {problem}",))


def run_started() -> int:
    """The time to pass to `disarm_after`, taken before the command starts: file system
    timestamps are coarse, so one tick earlier."""
    return time.time_ns() - _TICK_NS


_TICK_NS = 20_000_000


def disarm_after(
    result: Result[RunResult, SandboxError],
    workspace: str,
    policy: Policy,
    started: int,
    git: GitFacts | None,
    *,
    skip: Collection[str] = (),
    exposed: Collection[str] = (),
) -> Result[RunResult, SandboxError]:
    """After a run: the repositories it made that would run code on the host are disarmed
    (see `git_new_repositories`; `git`: the backend's, as for `prepare_run`; `exposed`: the
    protected paths whose guard was lost), and a successful result says so."""
    warnings = disarm_new_repositories(
        workspace, policy, since_ns=started, facts=git, skip=skip, exposed=exposed
    )
    if not warnings or not isinstance(result, Success):
        return result
    value = result.unwrap()
    return Success(attrs.evolve(value, warnings=value.warnings + warnings))


@functools.cache
def _prepares_cgroups(kind: type) -> bool:
    """Whether runners of this class prepare children in pooled cgroups (`PreparesCgroups`:
    they honour `SpawnSpec.prepare_after`); asked once per class, since an isinstance check
    against a runtime protocol costs tens of microseconds."""
    return callable(getattr(kind, "prepare_cgroups", None))


async def execute_spec(
    backend: str,
    runner: ProcessRunner,
    spec: SpawnSpec,
    policy: Policy,
    *,
    warnings: tuple[str, ...] = (),
    violations: tuple[Violation, ...] = (),
    cgroups: CgroupManager | str | None = None,
    adjust: Callable[[ProcessOutcome], ProcessOutcome] | None = None,
) -> Result[RunResult, SandboxError]:
    """Run `spec` (inside a fresh cgroup when there is a manager) and classify the outcome.

    `adjust`: the backend's reading of the raw outcome before it is classified (bubblewrap
    turns its init's "128+N" back into signal N)."""
    too_long = exec_problem(spec.argv, spec.env, executable=spec.executable)
    if too_long is not None:  # said before anything starts, naming the kernel's limit
        return Failure(too_long)
    manager = cgroups if isinstance(cgroups, CgroupManager) else None
    cgroup_run: CgroupRun | None = None
    if manager is not None:
        try:
            cgroup_run = manager.create(policy.limits)
        except OSError as error:
            return Failure(BackendFailed(backend=backend, reason=f"cgroup: {error}"))
        # The next runs that get a pooled cgroup find their child inside already. The pool
        # is first in, first out: this run's cgroup, back in it after the run, gets its
        # child when the next run names it, and is handed out two runs later; so at least
        # two besides it, or runs back to back would find theirs still being prepared.
        prepare = manager.idle_procs_files(minimum=2) if _prepares_cgroups(type(runner)) else ()
        spec = attrs.evolve(
            spec,
            cgroup_procs=spec.cgroup_procs + cgroup_run.procs_files,
            prepare_after=prepare,
        )
    events: CgroupEvents | None = None
    try:
        outcome = await runner.run(spec)
        if manager is not None and cgroup_run is not None:
            events = manager.events(cgroup_run)
    finally:
        if manager is not None and cgroup_run is not None:
            with contextlib.suppress(OSError):
                manager.destroy(cgroup_run)

    def classified(raw: ProcessOutcome) -> Result[RunResult, SandboxError]:
        if raw.stopped is not None:  # the spec's watch stopped it: see SpawnSpec
            return Failure(BackendFailed(backend=backend, reason=f"stopped: {raw.stopped}"))
        finished = raw if adjust is None else adjust(raw)
        return classify(
            run_result(backend, finished, warnings=warnings, violations=violations),
            limits=policy.limits,
            timed_out=finished.timed_out,
            events=events,
            interrupted=finished.interrupted,
        )

    ran: Result[ProcessOutcome, SandboxError] = outcome
    return ran.bind(classified)
