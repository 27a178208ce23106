"""How a memory or process limit is seen to hold on a host-process backend (process,
bubblewrap, landlock), whoever runs the tests.

With a cgroup (root, or a user with cgroup delegation) the memory bomb is OOM-killed and the
run fails with the typed error; the fork bomb's refused forks are counted, and the run, which
no refused fork ends, completes with a `process_limit` violation carrying the count
(docs/failure-semantics.md). Without one (an ordinary user without cgroup delegation, which
the threat model covers) the backend's capabilities say it enforces the limit by rlimit
(`mechasandbox.backends.resources`): the kernel refuses the allocation or the fork inside the
command, and the run ends as the command's own failure. Each check here asserts the way the
backend says applies on this host, so neither case can pass by being skipped.
"""

from __future__ import annotations

from returns.result import Failure, Result, Success

from mechasandbox.backends.base import Backend
from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.errors import MemoryLimit, SandboxError
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupManager


def _by_cgroup(backend: Backend) -> bool:
    return isinstance(getattr(backend, "cgroups", None), CgroupManager)


def _refused_inside(
    backend: Backend, result: Result[RunResult, SandboxError], protection: Protection, rlimit: str
) -> RunResult:
    detail = backend.probe().unwrap().detail(protection) or ""
    assert rlimit in detail, f"no cgroup here, yet {protection} is said to be: {detail!r}"
    assert isinstance(result, Success), result
    finished: RunResult = result.unwrap()
    assert finished.exit_code != 0, finished
    return finished


def assert_fork_bomb_stopped(backend: Backend, result: Result[RunResult, SandboxError]) -> None:
    """A shell that starts more processes than the limit allows was stopped."""
    if _by_cgroup(backend):
        assert isinstance(result, Success), result
        (violation,) = [v for v in result.unwrap().violations if v.kind == "process_limit"]
        assert violation.count is not None and violation.count > 0, violation
        assert b"fork" in result.unwrap().stderr, result  # what sh said when refused
        return
    finished = _refused_inside(backend, result, Protection.PROCESSES, "RLIMIT_NPROC")
    assert b"Cannot fork" in finished.stderr, finished  # sh, when fork() fails with EAGAIN


def assert_memory_bomb_stopped(backend: Backend, result: Result[RunResult, SandboxError]) -> None:
    """A Python program that allocates beyond the limit was stopped."""
    if _by_cgroup(backend):
        assert isinstance(result, Failure), result
        assert isinstance(result.failure(), MemoryLimit), result
        return
    finished = _refused_inside(backend, result, Protection.MEMORY, "RLIMIT_AS")
    assert b"MemoryError" in finished.stderr, finished
