"""Warm children: the spawn helper forks a run's child ahead of time, already inside the
pooled cgroup the next run will get. The run must still land in its cgroup, the waiting
children must not be mistaken for leftovers, and none may outlive its cgroup or the helper."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import attrs
import pytest
from returns.result import Failure, Result, Success

from mechasandbox.backends.linux.bwrap_hooks import seccomp_hook, seccomp_program
from mechasandbox.domain import Limits
from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.limits.cgroup import CgroupManager, CgroupRun
from mechasandbox.runner.client import SpawnHelperClient
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.spec import ChildHook, ProcessOutcome, RlimitSetting, SpawnSpec
from tests.conftest import require_exec_shim

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")

SHOW_CGROUP = SpawnSpec(
    argv=("cat", "/proc/self/cgroup"), env=(("PATH", "/usr/bin:/bin"),), cwd="/", timeout_s=10
)


@pytest.fixture
def manager() -> Iterator[CgroupManager]:
    probed = CgroupManager.probe()
    if isinstance(probed, str):
        pytest.skip(f"no writable cgroup here: {probed}")
    yield probed
    probed.close()


@pytest.fixture(params=["shim", "forked"])
def own_runner(request: pytest.FixtureRequest) -> Iterator[HelperProcessRunner]:
    """A runner of its own, whose warm children are the exec shim, then forked ones."""
    if request.param == "shim":
        require_exec_shim()
    runner = HelperProcessRunner(SpawnHelperClient(exec_shim=request.param == "shim"))
    yield runner
    runner.close()


@pytest.fixture
def forked_own_runner() -> Iterator[HelperProcessRunner]:
    """For what only forked warm children do: apply a policy's ahead hooks while they wait
    (an exec shim child applies everything once its run has come)."""
    runner = HelperProcessRunner(SpawnHelperClient(exec_shim=False))
    yield runner
    runner.close()


def _helper_pid(runner: HelperProcessRunner) -> int:
    pid = runner._helper.pid
    assert pid is not None
    return pid


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def _in_cgroup(pid: int, directory: str) -> bool:
    try:
        membership = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return f"/{Path(directory).name}\n" in membership


def _waiting_in(runner: HelperProcessRunner, directory: str, timeout_s: float = 10) -> list[int]:
    """The helper's children inside `directory`, waiting until one has joined and been
    offered to the host."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        inside = [p for p in _children(_helper_pid(runner)) if _in_cgroup(p, directory)]
        if inside:
            return _offered(runner, inside, deadline)
        time.sleep(0.02)
    return []


def _offered(runner: HelperProcessRunner, pids: list[int], deadline: float) -> list[int]:
    """`pids` once the host holds an offer for each that is still alive: a run handed
    over before the offer came would be forked afresh instead (correct, but not what the
    tests are about)."""
    client = runner._helper
    while True:
        with client._lock:
            assert client._control is not None
            client._collect_offers(client._control)
            held = {offer.pid for group in client._offers.values() for offer in group}
        if all(pid in held or not os.path.exists(f"/proc/{pid}") for pid in pids):
            return pids
        assert time.monotonic() < deadline, "a warm child was not offered"
        time.sleep(0.005)


def _run(runner: HelperProcessRunner, spec: SpawnSpec) -> str:
    outcome: Result[ProcessOutcome, SpawnFailed] = anyio.run(runner.run, spec)
    assert isinstance(outcome, Success), outcome
    finished: ProcessOutcome = outcome.unwrap()
    assert finished.exit_code == 0, outcome
    return finished.stdout.decode()


def test_a_run_handed_to_a_warm_child_runs_inside_its_cgroup(
    manager: CgroupManager, own_runner: HelperProcessRunner
) -> None:
    limits = Limits(max_processes=16)
    first = manager.create(limits)
    _run(own_runner, attrs.evolve(SHOW_CGROUP, cgroup_procs=first.procs_files))
    manager.destroy(first)
    own_runner.prepare_cgroups(manager.idle_procs_files())
    waiting = _waiting_in(own_runner, first.directories[0])
    assert waiting, "no warm child joined the pooled cgroup"

    second = manager.create(limits)
    try:
        assert second.directories == first.directories  # first in, first out
        shown = _run(own_runner, attrs.evolve(SHOW_CGROUP, cgroup_procs=second.procs_files))
        for directory in second.directories:
            assert f"/{Path(directory).name}\n" in shown
        # It was the warm child that ran: it is gone now, reaped as the run's root.
        assert not any(os.path.exists(f"/proc/{pid}") for pid in waiting)
    finally:
        manager.destroy(second)


def test_warm_children_survive_other_runs_and_die_with_their_cgroup(
    manager: CgroupManager, own_runner: HelperProcessRunner
) -> None:
    run = manager.create(Limits())
    _run(own_runner, attrs.evolve(SHOW_CGROUP, cgroup_procs=run.procs_files))
    manager.destroy(run)
    own_runner.prepare_cgroups(manager.idle_procs_files())
    waiting = _waiting_in(own_runner, run.directories[0])
    assert waiting
    # A run that ends kills what it left behind; a warm child is no leftover of it.
    _run(own_runner, attrs.evolve(SHOW_CGROUP, argv=("true",)))
    assert all(os.path.exists(f"/proc/{pid}") for pid in waiting)

    manager.close()  # removing the pooled cgroup kills the child waiting inside
    assert not any(os.path.exists(d) for d in run.directories)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in waiting):
        assert time.monotonic() < deadline, "the warm child outlived its cgroup"
        time.sleep(0.02)
    # The helper noticed and forks afresh: the next run in a new cgroup still works.
    fresh = manager.create(Limits())
    try:
        shown = _run(own_runner, attrs.evolve(SHOW_CGROUP, cgroup_procs=fresh.procs_files))
        assert f"/{Path(fresh.directories[0]).name}\n" in shown
    finally:
        manager.destroy(fresh)


def test_warm_children_die_with_the_helper(own_runner: HelperProcessRunner) -> None:
    _run(own_runner, attrs.evolve(SHOW_CGROUP, argv=("true",)))
    helper = _helper_pid(own_runner)
    deadline = time.monotonic() + 10
    while not _children(helper):  # the warm child without cgroups
        assert time.monotonic() < deadline, "no warm child was prepared"
        time.sleep(0.02)
    waiting = _children(helper)
    own_runner.close()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in waiting):
        assert time.monotonic() < deadline, "a warm child outlived the helper"
        time.sleep(0.02)


def test_a_run_needing_a_hook_the_warm_child_lacks_still_gets_it(
    own_runner: HelperProcessRunner,
) -> None:
    """The warm child without cgroups was forked before the hook's module was loaded in
    the helper: the run must still have its hook applied (here: the seccomp program handed
    over on fd 3, as bubblewrap receives it)."""
    _run(own_runner, attrs.evolve(SHOW_CGROUP, argv=("true",)))
    helper = _helper_pid(own_runner)
    deadline = time.monotonic() + 10
    while not _children(helper):
        assert time.monotonic() < deadline, "no warm child was prepared"
        time.sleep(0.02)
    spec = attrs.evolve(SHOW_CGROUP, argv=("sh", "-c", "wc -c <&3"), hooks=(seccomp_hook(),))
    assert int(_run(own_runner, spec)) == len(seccomp_program())
    # And again, now handed to a warm child forked after the module was loaded.
    time.sleep(0.2)
    assert int(_run(own_runner, spec)) == len(seccomp_program())


def test_a_warm_child_whose_join_failed_reports_the_run_as_not_started(
    own_runner: HelperProcessRunner, tmp_path: Path
) -> None:
    """A run handed to a warm child that could not join its cgroup must fail at the cgroup
    stage, as a freshly forked child would, and never look like a run that exited 0."""
    missing = (str(tmp_path / "gone" / "cgroup.procs"),)
    _run(own_runner, attrs.evolve(SHOW_CGROUP, argv=("true",)))
    helper = _helper_pid(own_runner)
    before = set(_children(helper))
    own_runner.prepare_cgroups([missing])
    deadline = time.monotonic() + 10
    while not set(_children(helper)) - before:
        assert time.monotonic() < deadline, "no warm child was prepared"
        time.sleep(0.02)
    time.sleep(0.2)  # its join has failed by now; it waits for a run all the same
    assert set(_children(helper)) - before, "the warm child left before its run"
    outcome = anyio.run(own_runner.run, attrs.evolve(SHOW_CGROUP, cgroup_procs=missing))
    assert isinstance(outcome, Failure), outcome
    assert "cgroup" in outcome.failure().reason


# --- ahead hooks: applied by the warm child while it waits ---------------------------------
ISOLATE = "mechasandbox.backends.linux.landlock_hook:isolate"
SHOW_CONFINEMENT = SpawnSpec(
    argv=("cat", "/proc/self/status", "/proc/self/limits"),
    env=(("PATH", "/usr/bin:/bin"),),
    cwd="/",
    timeout_s=10,
)


def _confined(nofile: int, *, seccomp: bool = True, program: bytes | None = None) -> SpawnSpec:
    """A spec whose ahead hook sets no_new_privs and (with `seccomp`) loads a filter, and
    whose rlimits cap open files at `nofile`. Capabilities stay: the test runs as any user."""
    if seccomp:
        program = program if program is not None else seccomp_program()
    argument = {
        "drop_capabilities": False,
        "seccomp": base64.b64encode(program).decode() if seccomp and program else None,
    }
    return attrs.evolve(
        SHOW_CONFINEMENT,
        rlimits=(RlimitSetting(resource="RLIMIT_NOFILE", soft=nofile, hard=nofile),),
        hooks=(ChildHook(target=ISOLATE, argument=argument, ahead=True),),
    )


def _field(shown: str, name: str) -> str:
    for line in shown.splitlines():
        if line.startswith(name):
            return line[len(name) :].split()[0]
    raise AssertionError(f"{name} not shown in {shown!r}")


def _warm_pids(runner: HelperProcessRunner, before: set[int]) -> set[int]:
    """The helper's children that were not there `before`: the warm child it prepares
    once the last run ended (waited for)."""
    helper = _helper_pid(runner)
    deadline = time.monotonic() + 10
    while not set(_children(helper)) - before:
        assert time.monotonic() < deadline, "no warm child was prepared"
        time.sleep(0.02)
    return set(_offered(runner, sorted(set(_children(helper)) - before), deadline))


def test_a_warm_child_applies_the_ahead_hooks_of_matching_runs_only(
    forked_own_runner: HelperProcessRunner,
) -> None:
    first = _run(forked_own_runner, _confined(200))  # a fresh fork: the reference
    assert (_field(first, "Seccomp:"), _field(first, "NoNewPrivs:")) == ("2", "1")
    assert _field(first, "Max open files") == "200"

    # The same policy again: handed to the warm child that applied all of it while waiting.
    waiting = _warm_pids(forked_own_runner, set())
    again = _run(forked_own_runner, _confined(200))
    assert not any(os.path.exists(f"/proc/{pid}") for pid in waiting), "not handed over"
    assert (_field(again, "Seccomp:"), _field(again, "NoNewPrivs:")) == ("2", "1")
    assert _field(again, "Max open files") == "200"

    # The same hooks, other rlimits: handed over too (the rlimits wait for the run).
    waiting = _warm_pids(forked_own_runner, set())
    limited = _run(forked_own_runner, _confined(250))
    assert not any(os.path.exists(f"/proc/{pid}") for pid in waiting), "not handed over"
    assert (_field(limited, "Seccomp:"), _field(limited, "Max open files")) == ("2", "250")

    # No filter: the waiting child (filter loaded) must not take it; the run gets exactly
    # its own. The child waits on for runs like the first.
    waiting = _warm_pids(forked_own_runner, set())
    other = _run(forked_own_runner, _confined(300, seccomp=False))
    assert (_field(other, "Seccomp:"), _field(other, "NoNewPrivs:")) == ("0", "1")
    assert _field(other, "Max open files") == "300"
    assert all(os.path.exists(f"/proc/{pid}") for pid in waiting), "a mismatched child ran"
    back = _run(forked_own_runner, _confined(200))
    assert not any(os.path.exists(f"/proc/{pid}") for pid in waiting), "not handed over"
    assert (_field(back, "Seccomp:"), _field(back, "Max open files")) == ("2", "200")

    # No ahead hook at all, after a child prepared for the last policy: nothing of it.
    _warm_pids(forked_own_runner, set())
    plain = _run(forked_own_runner, SHOW_CONFINEMENT)
    assert (_field(plain, "Seccomp:"), _field(plain, "NoNewPrivs:")) == ("0", "0")
    assert _field(plain, "Max open files") != "300"


def test_an_ahead_hook_that_failed_in_the_warm_child_fails_the_run_it_is_handed(
    forked_own_runner: HelperProcessRunner,
) -> None:
    """An invalid filter (the kernel refuses it): the fresh fork reports the hook stage;
    the warm child prepared for the same request failed while waiting and must report it
    for the run handed over, never run the command unfiltered."""
    broken = _confined(200, program=b"\xff\xff\x00\x00\x00\x00\x00\x00")
    outcome = anyio.run(forked_own_runner.run, broken)
    assert isinstance(outcome, Failure), outcome
    assert "hook" in outcome.failure().reason
    waiting = _warm_pids(forked_own_runner, set())
    time.sleep(0.2)  # its hook has failed by now; it waits for a run all the same
    outcome = anyio.run(forked_own_runner.run, broken)
    assert isinstance(outcome, Failure), outcome
    assert "hook" in outcome.failure().reason
    assert not any(os.path.exists(f"/proc/{pid}") for pid in waiting), "not handed over"


def test_a_warm_child_in_a_pooled_cgroup_is_prepared_like_the_run_named(
    manager: CgroupManager, forked_own_runner: HelperProcessRunner
) -> None:
    """The prepare frame names the run the next ones will resemble. Named twice in a row
    (one policy in use), a warm child in the pooled cgroup applies its filter while it
    waits (seen in its own status), the next such run is handed to it, and the generic
    child prepared before it is let go."""
    limits = Limits(max_processes=16)
    first = manager.create(limits)
    like = attrs.evolve(_confined(200), cgroup_procs=first.procs_files)
    _run(forked_own_runner, like)
    manager.destroy(first)
    forked_own_runner.prepare_cgroups(manager.idle_procs_files(), like=like)
    (generic,) = _waiting_in(forked_own_runner, first.directories[0])
    forked_own_runner.prepare_cgroups(manager.idle_procs_files(), like=like)
    deadline = time.monotonic() + 10
    while not (filtered := _filtered_besides(forked_own_runner, first.directories[0], generic)):
        assert time.monotonic() < deadline, "no warm child applied the filter ahead"
        time.sleep(0.02)

    _run_filtered_in_the_pooled_cgroup(manager, forked_own_runner, first, like, filtered[0])
    while os.path.exists(f"/proc/{generic}"):  # let go once the newer one was offered
        assert time.monotonic() < deadline, "the generic warm child was kept"
        time.sleep(0.02)


def _filtered_besides(runner: HelperProcessRunner, directory: str, other: int) -> list[int]:
    """The helper's children in `directory`, other than `other`, that run under a filter."""
    found = []
    for pid in _waiting_in(runner, directory):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if pid != other and _field(status, "Seccomp:") == "2":
            found.append(pid)
    return found


def _run_filtered_in_the_pooled_cgroup(
    manager: CgroupManager,
    runner: HelperProcessRunner,
    first: CgroupRun,
    filtered: SpawnSpec,
    waiting: int,
) -> None:
    """Run `filtered` (`_confined(200)`) in the cgroup the pool hands out next, which must be
    `first`'s, where `waiting` waits: it must take the run, confined as asked."""
    second = manager.create(Limits(max_processes=16))
    try:
        assert second.directories == first.directories
        shown = _run(runner, attrs.evolve(filtered, cgroup_procs=second.procs_files))
        assert (_field(shown, "Seccomp:"), _field(shown, "Max open files")) == ("2", "200")
        assert not os.path.exists(f"/proc/{waiting}"), "not handed over"
    finally:
        manager.destroy(second)


def test_a_pooled_cgroup_shared_by_two_policies_gets_a_generic_warm_child(
    manager: CgroupManager, forked_own_runner: HelperProcessRunner
) -> None:
    """Prepare frames naming different runs (two backends sharing the pool): the warm child
    applies nothing ahead, and takes a run of either kind, set up entirely at run time."""
    limits = Limits(max_processes=16)
    first = manager.create(limits)
    filtered = attrs.evolve(_confined(200), cgroup_procs=first.procs_files)
    plain = attrs.evolve(_confined(300, seccomp=False), cgroup_procs=first.procs_files)
    _run(forked_own_runner, filtered)
    manager.destroy(first)
    forked_own_runner.prepare_cgroups(manager.idle_procs_files(), like=plain)
    forked_own_runner.prepare_cgroups(manager.idle_procs_files(), like=filtered)
    (waiting,) = _waiting_in(forked_own_runner, first.directories[0])
    time.sleep(0.2)
    assert _field(Path(f"/proc/{waiting}/status").read_text(), "NoNewPrivs:") == "0"
    _run_filtered_in_the_pooled_cgroup(manager, forked_own_runner, first, filtered, waiting)


def test_a_run_naming_pooled_cgroups_leaves_children_prepared_like_it_there(
    manager: CgroupManager, forked_own_runner: HelperProcessRunner
) -> None:
    """`prepare_after` (what `execute_spec` sets): the spawn request, or the claim of a run
    handed to a warm child, names the pooled cgroups, with no prepare frame. Named by two
    runs in a row under one policy (the first forked by the helper, the second handed to
    the child it then offered), the child left in the pooled cgroup applied the filter
    while it waits, and takes the next such run there."""
    pooled = manager.idle_procs_files(minimum=1)
    target = pooled[0]
    like = attrs.evolve(_confined(200), prepare_after=pooled)
    _run(forked_own_runner, like)  # the spawn request names the pool: a generic child there
    _warm_pids(forked_own_runner, set())  # the child without cgroups, prepared like the run
    _run(forked_own_runner, like)  # handed to that child: its claim names the pool

    directory = os.path.dirname(target[0])
    deadline = time.monotonic() + 10
    while not (filtered := _filtered_besides(forked_own_runner, directory, 0)):
        assert time.monotonic() < deadline, "no child prepared like the run in the pool"
        time.sleep(0.02)
    second = manager.create(Limits(max_processes=16))
    try:
        assert second.procs_files == target  # first in, first out
        shown = _run(forked_own_runner, attrs.evolve(like, cgroup_procs=second.procs_files))
        assert (_field(shown, "Seccomp:"), _field(shown, "Max open files")) == ("2", "200")
        assert not os.path.exists(f"/proc/{filtered[0]}"), "not handed over"
    finally:
        manager.destroy(second)
