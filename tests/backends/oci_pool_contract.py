"""The container contract through the warm pool, plus what only a pool has.

Subclassed per engine (test_docker_pool.py, test_podman_pool.py). Every test closes the
pools it made and checks that no container of this process is left behind.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import attrs
import pytest
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.oci import (
    AfterUse,
    OciBackend,
    PooledBackend,
    PoolExhausted,
    PoolSettings,
    WhenExhausted,
)
from mechasandbox.backends.oci.cli import owner_id
from mechasandbox.backends.oci.compiler import LABEL_OWNER
from mechasandbox.backends.oci.engine_api import EngineApi, locate
from mechasandbox.domain import MIB, BackendUnavailable, MemoryLimit, RunRequest, Timeout
from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec
from mechasandbox.testing.fakes import FakeRunner
from tests.backends.oci_contract import TEST_IMAGE, OciContract, failed, ok, policy
from tests.conftest import require_available
from tests.git_attacks import git, git_ok


class OciPoolContract(OciContract):
    settings = PoolSettings(size=2)
    watched_runs = False
    # Whether the engine's pool can keep keeper containers (a runner without the session
    # agent): docker's can; podman's runs on ready sessions only.
    keepers: ClassVar[bool] = True

    def need_keepers(self) -> None:
        if not self.keepers:
            pytest.skip(f"{self.cli}'s warm pool has no keepers (pool_settings.PODMAN_UNSUPPORTED)")

    @pytest.fixture(autouse=True)
    def _close_pools(self) -> Iterator[None]:
        self.pools: list[PooledBackend] = []
        yield
        for pool in self.pools:
            pool.close()
        assert self.all_containers() == []

    def pooled(self, backend: OciBackend, settings: PoolSettings | None = None) -> PooledBackend:
        pooled = PooledBackend(backend=backend, settings=settings or self.settings)
        self.pools.append(pooled)
        return pooled

    def make(self, runner: HelperProcessRunner, **options: Any) -> Any:
        return self.pooled(self.backend_class(runner=runner, **options))

    def with_host(self, backend: Any, host: HostContext) -> Any:
        return self.pooled(attrs.evolve(backend.backend, host=host), backend.settings)

    def settle(self, backend: Any) -> None:
        backend.close()  # warm containers keep their placeholders on the host

    def all_containers(self) -> list[str]:
        listed = subprocess.run(
            [self.cli, "ps", "--all", "--format", "{{.Names}}", "--filter",
             f"label={LABEL_OWNER}={owner_id()}"],
            capture_output=True, check=True, text=True,
        )  # fmt: skip
        return sorted(listed.stdout.split())

    def leftovers(self) -> list[str]:
        """Containers of this process the pools do not know about (idle ones are expected).

        A used container is discarded in the background, so give removals a few seconds
        before calling what is still there a leftover."""
        deadline = time.monotonic() + 10
        while True:
            known = {name for pool in self.pools for name in pool.pool._members}
            unknown = [name for name in self.all_containers() if name not in known]
            if not unknown or time.monotonic() > deadline:
                return unknown
            time.sleep(0.2)

    def fresh(self, runner: HelperProcessRunner, **settings: Any) -> PooledBackend:
        backend = self.pooled(
            self.backend_class(runner=runner, image=TEST_IMAGE), PoolSettings(**settings)
        )
        require_available(backend)
        return backend

    # -- what only a pool has ----------------------------------------------------------------

    async def test_discard_after_use_gives_a_fresh_container(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        backend = self.fresh(runner, size=1)
        mark = RunRequest(
            argv=["sh", "-c", "cat /tmp/mark 2>/dev/null; echo x > /tmp/mark; sleep 30 &"],
            workspace=str(tmp_path),
        )
        assert ok(await backend.run(mark, policy())).stdout == b""
        assert ok(await backend.run(mark, policy())).stdout == b""  # nothing carried over
        assert backend.pool.stats()["busy"] == 0

    async def test_a_pooled_runs_state_is_not_seen_by_the_next(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        """Each one-shot run gets a sandbox no earlier run touched: a file the first left in
        /tmp and a process it left running are not there for the second, on ready sessions
        (one command each) as on keepers."""
        backend = self.fresh(runner, size=1)
        assert backend.pool.sessions  # the helper runner starts the session agent
        seen = await _leave_then_look(backend, tmp_path)
        assert b"left" not in seen, seen
        assert b"sleep 4242" not in seen, seen
        assert b"tr " in seen  # the listing itself ran: it sees its own processes

    @pytest.mark.parametrize(
        ("after_use", "sessions"),
        [(AfterUse.DISCARD, False), (AfterUse.DISCARD, True), (AfterUse.REUSE, True)],
        ids=["discard-keeper", "discard-session", "reuse-session"],
    )
    async def test_a_process_a_command_left_cannot_arm_a_repository_after_it(
        self, runner: HelperProcessRunner, tmp_path: Path, after_use: AfterUse, sessions: bool
    ) -> None:
        """The disarm after a run looks at the workspace once: a process the command left
        that arms a repository over and over must be gone before that look, or the host's
        git runs its command. A keeper cannot kill what its `exec` started: a discarded
        keeper is removed first; a session's agent kills the command's tree before the run
        returns, whether the session is then closed or reused."""
        if not sessions:
            self.need_keepers()
        backend = self.fresh(runner, size=1, after_use=after_use)
        if not sessions:
            backend.pool.sessions = False  # keepers, as where the runner cannot start the agent
        git_ok("init", "-q", cwd=tmp_path)
        (tmp_path / "src").mkdir()
        marker = tmp_path / "planted-ran"
        evil = "src/evil/.git"
        config = f'[core]\\n\\tfsmonitor = "touch {marker}; false"\\n'
        arm = (
            f"(while :; do mkdir -p {evil}/hooks {evil}/objects {evil}/refs; "
            f"echo 'ref: refs/heads/main' > {evil}/HEAD; printf '{config}' > src/c; "
            f"mv -f src/c {evil}/config; sleep 0.01; done) >/dev/null 2>&1 & "
            "sleep 0.3; echo started"
        )
        request = RunRequest(argv=["sh", "-c", arm], workspace=str(tmp_path))
        assert ok(await backend.run(request, policy())).stdout == b"started\n"
        await anyio.sleep(1.0)
        if (tmp_path / "src" / "evil").is_dir():
            git("status", cwd=tmp_path / "src" / "evil")
        assert not marker.exists()

    async def test_reuse_keeps_a_commands_files_not_its_processes(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        """`REUSE` hands the next command of the key the same container: what the last one
        wrote in /tmp is there, what it left running is not (the agent killed its tree)."""
        backend = self.fresh(runner, size=1, after_use=AfterUse.REUSE)
        seen = await _leave_then_look(backend, tmp_path)
        assert seen.startswith(b"left\n"), seen
        assert b"sleep 4242" not in seen, seen
        assert len(self.all_containers()) == 1

    async def test_reuse_retires_a_container_past_its_maximum_age(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        """`max_age_s`: a reused container started longer ago is not handed out again: the
        next command gets a fresh one (nothing the last left in /tmp), the old one goes."""
        backend = self.fresh(runner, size=1, after_use=AfterUse.REUSE, max_age_s=1.0)
        mark = RunRequest(
            argv=["sh", "-c", "cat /tmp/mark 2>/dev/null; echo again > /tmp/mark"],
            workspace=str(tmp_path),
        )
        assert ok(await backend.run(mark, policy())).stdout == b""
        (first,) = self.all_containers()
        await anyio.sleep(1.2)
        assert ok(await backend.run(mark, policy())).stdout == b""  # a fresh container
        deadline = time.monotonic() + 10  # the old one removed, in the background
        while first in self.all_containers() and time.monotonic() < deadline:
            await anyio.sleep(0.2)
        assert first not in self.all_containers()

    async def test_reuse_without_the_session_agent_is_refused(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        """Reused, a keeper would keep what a command left running (see the test above):
        `REUSE` needs the agent, and says so."""
        backend = self.fresh(runner, size=1, after_use=AfterUse.REUSE)
        backend.pool.sessions = False  # as where the runner cannot start the agent
        ran = await backend.run(RunRequest(argv=["true"], workspace=str(tmp_path)), policy())
        assert isinstance(ran, Failure), ran
        assert isinstance(ran.failure(), BackendUnavailable)
        assert "session agent" in ran.failure().message

    async def test_concurrent_runs_keep_a_key_within_its_bounds(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        """`PoolSettings`: with DISCARD a key holds `size` in use and `size` ready or
        starting, and at most `size` used ones wait for the starts before their removal
        (under a steady load a start is always under way: 25 containers of one key piled up
        at size 2 when every removal waited); the engine's removals in flight come on top,
        bounded by the engine. Sampled under 10 concurrent callers."""
        size = 2
        backend = self.fresh(runner, size=size)
        request = RunRequest(argv=["sleep", "0.2"], workspace=str(tmp_path))
        worst: dict[str, int] = {}
        containers = 0
        done = anyio.Event()

        async def sample() -> None:
            nonlocal containers
            while not done.is_set():
                stats = backend.pool.stats()
                for key in ("busy", "waiting"):
                    worst[key] = max(worst.get(key, 0), stats[key])
                ready = stats["idle"] + stats["starting"]
                worst["ready"] = max(worst.get("ready", 0), ready)
                listed = await anyio.to_thread.run_sync(self.all_containers)
                containers = max(containers, len(listed))
                await anyio.sleep(0.05)

        async def runs() -> None:
            for _ in range(3):
                assert ok(await backend.run(request, policy())).exit_code == 0

        async with anyio.create_task_group() as sampling:
            sampling.start_soon(sample)
            async with anyio.create_task_group() as group:
                for _ in range(10):
                    group.start_soon(runs)
            done.set()
        assert backend.pool.stats()["busy"] == 0
        assert worst["busy"] <= size and worst["ready"] <= size, worst
        assert worst["waiting"] <= size, worst
        assert containers < 25, containers  # what piled up before the cap

    async def test_reuse_keeps_the_container(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        backend = self.fresh(runner, size=1, after_use=AfterUse.REUSE)
        mark = RunRequest(
            argv=["sh", "-c", "cat /tmp/mark 2>/dev/null; echo again > /tmp/mark"],
            workspace=str(tmp_path),
        )
        assert ok(await backend.run(mark, policy())).stdout == b""
        assert ok(await backend.run(mark, policy())).stdout == b"again\n"
        assert len(self.all_containers()) == 1

    async def test_a_warm_container_whose_pin_the_host_replaced_is_not_used(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        """A warm container's mounts were made when it was created: one whose guarded path
        the host replaced while it waited (`git config` between two commands) would let
        the next command write the new `.git/config`. It is discarded instead."""
        backend = self.fresh(runner, size=1, after_use=AfterUse.REUSE)
        config = tmp_path / ".git" / "config"
        (tmp_path / ".git" / "hooks").mkdir(parents=True)
        config.write_text("[core]\n")
        first = RunRequest(argv=["true"], workspace=str(tmp_path))
        assert ok(await backend.run(first, policy())).exit_code == 0
        (before,) = self.all_containers()
        fresh = tmp_path / ".git" / "config.lock"
        fresh.write_text("[core]\n\tbare = false\n")
        os.rename(fresh, config)
        attack = RunRequest(
            argv=["sh", "-c", "echo '[core] fsmonitor = evil' >> .git/config; echo status=$?"],
            workspace=str(tmp_path),
        )
        result = ok(await backend.run(attack, policy()))
        assert b"status=0" not in result.stdout, result
        assert "evil" not in config.read_text()
        deadline = time.monotonic() + 10  # discarded: removed, in the background
        while before in self.all_containers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert before not in self.all_containers()

    async def test_a_container_is_never_reused_with_other_mounts(
        self,
        runner: HelperProcessRunner,
        tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> None:
        """The policy's readable paths and masks are the container's mounts: a command
        under another policy (or under the same one once the host's paths changed) gets a
        container of its own, never one that shows what its policy does not."""
        backend = self.fresh(runner, size=1, after_use=AfterUse.REUSE)
        outside = tmp_path_factory.mktemp("outside")
        (outside / "data").write_text("outside-data\n")
        (tmp_path / "later").mkdir()
        base = policy()
        granted = attrs.evolve(
            base, filesystem=attrs.evolve(base.filesystem, readable=(str(outside),))
        )
        denied = attrs.evolve(
            base, filesystem=attrs.evolve(base.filesystem, deny_read=(str(tmp_path / "secret"),))
        )
        read = RunRequest(
            argv=["sh", "-c", f"cat {outside}/data secret 2>/dev/null; true"],
            workspace=str(tmp_path),
        )
        assert ok(await backend.run(read, granted)).stdout == b"outside-data\n"
        assert ok(await backend.run(read, base)).stdout == b""
        (tmp_path / "secret").write_text("hunter2\n")  # the denied path exists now
        assert ok(await backend.run(read, denied)).stdout == b""
        assert backend.pool.stats()["keys"] == 3

    async def test_fail_fast_when_exhausted_and_bounded(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        backend = self.fresh(runner, size=1, when_exhausted=WhenExhausted.FAIL)
        slow = RunRequest(argv=["sleep", "3"], workspace=str(tmp_path))
        quick = RunRequest(argv=["true"], workspace=str(tmp_path))
        results: list[object] = []

        async def run_slow() -> None:
            results.append(await backend.run(slow, policy()))

        async with anyio.create_task_group() as group:
            group.start_soon(run_slow)
            while backend.pool.stats()["busy"] == 0:
                await anyio.sleep(0.05)
            error = failed(await backend.run(quick, policy()))
            assert isinstance(error, PoolExhausted), error
            assert error.kind == "pool_exhausted"
            # The bound holds: one in use, and its replacement (ready or starting).
            stats = backend.pool.stats()
            assert stats["busy"] == 1 and stats["idle"] + stats["starting"] <= 1, stats
            assert len(self.all_containers()) <= 2
        assert ok(results[0]).exit_code == 0

    async def test_a_discarded_container_is_replaced_while_its_command_runs(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        """Back to back, the next run finds its container started while the last ran: a
        container taken for a run that discards it is replaced at once, not once the run
        ended (then each run waited for a start)."""
        backend = self.fresh(runner, size=1)
        slow = RunRequest(argv=["sleep", "6"], workspace=str(tmp_path))
        async with anyio.create_task_group() as group:
            group.start_soon(backend.run, slow, policy())
            while backend.pool.stats()["busy"] == 0:
                await anyio.sleep(0.05)
            for _ in range(100):
                if backend.pool.stats()["idle"] == 1:
                    break
                await anyio.sleep(0.05)
            stats = backend.pool.stats()
            assert stats == {
                "keys": 1,
                "idle": 1,
                "busy": 1,
                "starting": 0,
                "removing": 0,
                "waiting": 0,
            }
            group.cancel_scope.cancel()

    async def test_wait_when_exhausted_then_times_out_or_gets_one(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        backend = self.fresh(runner, size=1, wait_timeout_s=1.0)
        slow = RunRequest(argv=["sleep", "4"], workspace=str(tmp_path))
        quick = RunRequest(argv=["echo", "mine"], workspace=str(tmp_path))
        async with anyio.create_task_group() as group:
            group.start_soon(backend.run, slow, policy())
            while backend.pool.stats()["busy"] == 0:
                await anyio.sleep(0.05)
            started = time.monotonic()
            error = failed(await backend.run(quick, policy()))
            assert isinstance(error, PoolExhausted)
            assert 0.9 <= time.monotonic() - started < 5
        patient = self.fresh(runner, size=1, wait_timeout_s=30.0)
        async with anyio.create_task_group() as group:
            group.start_soon(
                patient.run, RunRequest(argv=["sleep", "1"], workspace=str(tmp_path)), policy()
            )
            while patient.pool.stats()["busy"] == 0:
                await anyio.sleep(0.05)
            assert ok(await patient.run(quick, policy())).stdout == b"mine\n"

    async def test_idle_containers_are_stopped(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        backend = self.fresh(runner, size=2, idle_timeout_s=1.0)
        assert isinstance(
            backend.warm(RunRequest(argv=["true"], workspace=str(tmp_path)), policy()), Success
        )
        for _ in range(100):
            if backend.pool.stats()["idle"] == 2:
                break
            await anyio.sleep(0.1)
        assert len(self.all_containers()) == 2
        for _ in range(100):
            if not self.all_containers():
                break
            await anyio.sleep(0.1)
        assert self.all_containers() == []
        # The placeholders go with them (once each `rm` returned, a moment after the engine
        # stopped listing the container).
        for _ in range(50):
            if not list(tmp_path.iterdir()):
                break
            await anyio.sleep(0.1)
        assert list(tmp_path.iterdir()) == []

    async def test_timeout_kills_and_replaces_the_container(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        backend = self.fresh(runner, size=1)
        request = RunRequest(argv=["sh", "-c", "echo started; sleep 60"], workspace=str(tmp_path))
        error = failed(await backend.run(request, policy(timeout_s=2.0)))
        assert isinstance(error, Timeout)
        assert error.partial.stdout == b"started\n"
        assert self.leftovers() == []
        again = RunRequest(argv=["echo", "next"], workspace=str(tmp_path))
        assert ok(await backend.run(again, policy())).stdout == b"next\n"

    async def test_unhealthy_container_is_not_handed_out(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        backend = self.fresh(runner, size=1, health_check_after_s=0.0)
        request = RunRequest(argv=["echo", "ok"], workspace=str(tmp_path))
        backend.warm(request, policy())
        for _ in range(100):
            if backend.pool.stats()["idle"] == 1:
                break
            await anyio.sleep(0.1)
        (victim,) = self.all_containers()
        subprocess.run([self.cli, "rm", "--force", victim], check=True, capture_output=True)
        assert ok(await backend.run(request, policy())).stdout == b"ok\n"

    async def test_usage_is_read_from_the_containers_cgroup(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        backend = self.fresh(runner, size=1)
        request = RunRequest(
            argv=["sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"],
            workspace=str(tmp_path),
        )
        result = ok(await backend.run(request, policy()))
        assert result.usage.cpu_s > 0.05, result.usage
        assert result.usage.max_rss_bytes > 0

    async def test_memory_bomb_in_pool_is_memory_limit(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        backend = self.fresh(runner, size=1)
        request = RunRequest(
            argv=["sh", "-c", "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived"],
            workspace=str(tmp_path),
        )
        error = failed(await backend.run(request, policy(memory_bytes=48 * MIB)))
        assert isinstance(error, MemoryLimit), error

    async def test_close_removes_everything_and_reap_sees_pool_containers(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        backend = self.fresh(runner, size=2)
        request = RunRequest(argv=["true"], workspace=str(tmp_path))
        ok(await backend.run(request, policy()))
        for _ in range(100):  # the used one's removal waits for the replacement's start
            stats = backend.pool.stats()
            if stats["idle"] == 2 and stats["removing"] == 0:
                break
            await anyio.sleep(0.1)
        assert len(self.all_containers()) == 2
        kept = await backend.reap_leftovers()  # owner alive: kept
        assert isinstance(kept, Success) and kept.unwrap() == ()
        backend.close()
        assert self.all_containers() == []
        assert list(tmp_path.iterdir()) == []
        closed = await backend.run(request, policy())
        assert isinstance(closed, Failure)

    async def test_a_container_whose_removal_failed_is_removed_at_close(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        """The used container's removal fails once (as an engine error would): the pool
        must keep it known and remove it when it closes, not forget it running."""
        self.need_keepers()  # (its runner is not the helper runner: no session agent)
        flaky = _FirstRemovalFails(runner)
        backend = self.pooled(
            self.backend_class(runner=flaky, image=TEST_IMAGE), PoolSettings(size=1)
        )
        require_available(backend)
        cli = backend.backend._cli(backend.backend._engine().unwrap()[2])
        api = await locate(cli, podman=backend.backend.kind == "podman")
        if api is not None:  # its removals fail too: the pool falls back to the CLI's
            backend.pool.engine.use_api(_RefusingApi(api.socket_path))
        ok(await backend.run(RunRequest(argv=["true"], workspace=str(tmp_path)), policy()))
        for _ in range(100):  # discarded after use, in the background
            if flaky.refused is not None:
                break
            await anyio.sleep(0.1)
        assert flaky.refused is not None, "the used container was never removed"
        assert flaky.refused in self.all_containers()  # the failed removal left it there
        backend.close()
        assert flaky.refused not in self.all_containers()


async def _leave_then_look(backend: PooledBackend, workspace: Path) -> bytes:
    """One command leaves a file in /tmp and a process running (`sleep 4242`); what the
    next one sees: the file's content, then every process's command line."""
    leave = RunRequest(
        argv=["sh", "-c", "echo left > /tmp/mark; (exec sleep 4242) & echo started"],
        workspace=str(workspace),
    )
    look = RunRequest(
        argv=[
            "sh",
            "-c",
            "cat /tmp/mark 2>/dev/null; "
            "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done",
        ],
        workspace=str(workspace),
    )
    assert ok(await backend.run(leave, policy())).stdout == b"started\n"
    return ok(await backend.run(look, policy())).stdout


@attrs.frozen
class _RefusingApi(EngineApi):
    """The engine's API, except that no container is ever removed through it."""

    async def remove(self, name: str) -> bool:
        return False


class _FirstRemovalFails:
    """The real runner, except that the first `rm` of a container answers with an engine
    error instead of running."""

    def __init__(self, runner: HelperProcessRunner) -> None:
        self.runner = runner
        self.refused: str | None = None

    async def run(self, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        if self.refused is None and spec.argv[1:2] == ("rm",):
            self.refused = spec.argv[-1]
            return await FakeRunner(exit_code=1).run(spec)  # failed, not "no such container"
        return await self.runner.run(spec)

    def close(self) -> None:
        self.runner.close()
