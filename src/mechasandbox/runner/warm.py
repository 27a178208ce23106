"""Warm children: the spawn helper's children started ahead of a run (see `helper`).

A `prepare` frame (cgroup.procs files, no fds) asks for a child started
ahead of time that joins those cgroups and then waits for a run. Where the exec shim is
built (see `native`), that child is the shim, started with `posix_spawn`, which takes any
run that has a native form and applies everything once it has come (it is prepared like
nothing: `GENERIC`); otherwise, and for runs the shim cannot carry, it is forked. On
cgroup v1 a join waits for an RCU grace period (5-15 ms on a quiet host), and fork costs a
little too; a warm child pays both while nobody waits. One warm child without cgroups is
kept ready too (like the last spawn request). The hand-over changes nothing else: the warm
child is the helper's child like any run's root.

Offers and claims: the helper gives each warm child to the host. It sends an `offer` on the
control socket (pid, cgroups, what it is prepared like, the hook modules it has loaded) with
a socket that reaches the child; the host sends a spawn request for the same cgroups and
like the child straight there, with its stdio (the helper is not woken on the run's way to
its start), then a `claim` (pid, with the run's socket) to the helper, which then owns the
run as if it had forked it. The child marks its report pipe when a run came, so a child
that ends before its claim was read (a quick command) is kept until the claim comes, and
one that ends unmarked (let go: the host closed its socket; killed with its cgroup) is
forgotten. The helper never takes a child back: the host lets go of those it keeps no more.
Offers are sent without blocking (the host reads them only when it submits a run).

A warm child is prepared *like* a request (the spawn request it follows, or the `ahead` and
`rehearsals` fields of the prepare frame): while it waits it applies that request's `ahead`
hooks (hooks that depend on the policy alone: dropping capabilities, no_new_privs, seccomp;
see `runner.spec.ChildHook`), then calls its rehearsals (read-only). Only a request with the
same ahead hooks (an agent's next command under the same policy; the host compares their
JSON text) is handed to it; any other is given a generic warm child (prepared like
nothing: it applies everything once the run has come), or goes to the helper, which
forks. The order of the set-up is the same on every path: cgroup, ahead hooks, rlimits (so
a run never raises a limit with a capability it has dropped), the other hooks. Without
cgroups, a few warm children prepared like different requests wait side by side (a host
that alternates between backends). A pooled cgroup holds one, and may go to a run of any
backend next. The pooled cgroups to prepare come in a prepare frame, or in the `prepare`
field of a spawn request or claim (the run itself is then the one named: no message more
per run); the child is prepared like the run named only when the hint before named a like
one (one policy in use), and generic otherwise. Nothing a warm child applies ahead depends
on when it runs, so the run is confined exactly as a fresh fork would be.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket

from mechasandbox.runner import child, framing

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the helper does not import `typing`
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from mechasandbox.runner.child import ChildHook

# Warm children waiting at once (one per pooled cgroup, plus those without cgroups, each
# prepared like a different request; the host lets go of those it keeps no more).
MAX_WARM = 16


def ahead_of(request: dict[str, Any]) -> list[Any] | None:
    """What a warm child can apply before `request` comes: its ahead hooks, or None. (Not
    the rlimits: a low RLIMIT_NOFILE or RLIMIT_AS would get in the way of receiving and
    decoding the request itself.)"""
    ahead: list[Any] | None = request.get("ahead") or None
    return ahead


class Like:
    """What a warm child is prepared like (see the module's docstring): the `ahead_of` of
    the requests it can take (None: any request), and the rehearsals it calls while it
    waits."""

    __slots__ = ("ahead", "rehearsals")

    def __init__(self, request: dict[str, Any]) -> None:
        self.ahead = ahead_of(request)
        self.rehearsals: list[Any] = [[s, a] for s, a in request.get("rehearsals", ())]


GENERIC = Like({})


class Warm:
    """A warm child offered to the host: `report` as in `helper.Run`, `key`: the cgroups it
    joined, `like`: what it was prepared like."""

    __slots__ = ("key", "like", "pid", "report")

    def __init__(self, pid: int, report: int, key: tuple[str, ...], like: Like) -> None:
        self.pid = pid
        self.report = report
        self.key = key
        self.like = like

    def discard(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.close(self.report)


class WarmChildren:
    """The helper's warm children: those still to prepare (`wanted`, by the cgroup.procs
    files they join, () for none), prepared once the helper has nothing else to do; those
    offered to the host (`offered`, by pid); and those handed a run that ended before its
    claim was read (`unclaimed`).

    `shim`: the exec shim warm children are started from (see `native`), None: forked.
    `hooks`: the hooks the helper has loaded (a forked child inherits them). `post`: sends
    a frame with fds to the host without blocking."""

    def __init__(
        self,
        shim: str | None,
        hooks: dict[str, ChildHook],
        post: Callable[[bytes, list[int]], None],
        helper_pid: int,
    ) -> None:
        self.shim = shim
        self.hooks = hooks
        self._post = post
        self._helper_pid = helper_pid
        self.offered: dict[int, Warm] = {}
        self.wanted: list[tuple[tuple[str, ...], Like]] = []
        # The child, what its report pipe held, its wait status and rusage.
        self.unclaimed: dict[int, tuple[Warm, bytes, int, Any]] = {}
        self.last_prepare: list[Any] | None = None  # `ahead_of` the last prepare hint

    def __contains__(self, pid: int) -> bool:
        """`pid` is a warm child offered to the host (not yet a run)."""
        return pid in self.offered

    def want(self, key: tuple[str, ...], like: Like) -> None:
        """A warm child for `key` like `like`, unless one is offered or wanted already."""
        if self.shim is not None:  # a shim child applies everything once its run has come
            like = GENERIC
        if any(w.key == key and w.like.ahead == like.ahead for w in self.offered.values()):
            return
        if not any(k == key and w.ahead == like.ahead for k, w in self.wanted):
            self.wanted.append((key, like))

    def prepare_next(self) -> None:
        """Prepare the first warm child wanted."""
        self._prepare(*self.wanted.pop(0))

    def prepare_after(self, key: tuple[str, ...], like: Like, pooled: list[list[str]]) -> None:
        """After a run in the cgroups `key`, like `like`: without cgroups, a child ready for
        the next run like it; and those of the pooled cgroups the run named."""
        if not key:
            self.want(key, like)
        self.prepare_pooled(pooled, like)

    def _prepare(self, key: tuple[str, ...], like: Like) -> None:
        """Fork a warm child for `key`, prepared like `like` (see the module's docstring),
        and offer it to the host (see `_offer`)."""
        if any(w.key == key and w.like.ahead == like.ahead for w in self.offered.values()):
            return
        if len(self.offered) >= MAX_WARM:
            return
        runs_host, runs_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        report_r, report_w = os.pipe()
        try:
            pid = self._spawn_shim(key, runs_child, report_w) if self.shim else 0
            shim = pid != 0
            if not shim:
                pid = os.fork()
        except OSError:
            for fd in (report_r, report_w):
                os.close(fd)
            runs_host.close()
            runs_child.close()
            return
        if pid == 0:
            runs_host.close()
            os.close(report_r)
            child.wait_for_run(
                [os.fsencode(p) for p in key],
                runs_child,
                self.hooks,
                report_w,
                like.ahead,
                like.rehearsals,
            )
        runs_child.close()
        os.close(report_w)
        self.offered[pid] = Warm(pid, report_r, key, like)
        self._offer(pid, key, like, runs_host, shim=shim)

    def _spawn_shim(self, key: tuple[str, ...], runs: socket.socket, report_w: int) -> int:
        """Start the exec shim as a warm child (`posix_spawn`: no copy of the helper), with
        `runs` as its fd 3 and the report pipe as its fd 4; 0 when it cannot be started
        (the caller forks a Python one)."""
        assert self.shim is not None
        # Above 4 first, so that neither dup2 can clobber the other's source.
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (runs.fileno(), report_w)]
        try:
            return os.posix_spawn(
                self.shim,
                [self.shim, str(self._helper_pid), *key],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, moved[0], 3),
                    (os.POSIX_SPAWN_DUP2, moved[1], 4),
                ],
                setsid=True,
            )
        except OSError:
            return 0
        finally:
            for fd in moved:
                os.close(fd)

    def _offer(
        self,
        pid: int,
        key: tuple[str, ...],
        like: Like,
        runs: socket.socket,
        *,
        shim: bool = False,
    ) -> None:
        """Tell the host about a warm child, with the socket that hands it a run: the host
        sends a run prepared like it straight there (one process wake-up less than through
        the helper), and closes the socket to let the child go. `ahead` is the JSON text of
        the ahead hooks the child applied ("" for none: it takes any run, applying them
        itself), compared as text by the host; `hooks`: the hook modules it has loaded;
        `native`: it is the exec shim, which takes runs as `native` records."""
        offer = {
            "event": "offer",
            "pid": pid,
            "key": list(key),
            "ahead": "" if like.ahead is None else framing.encode_text(like.ahead),
            "hooks": [] if shim else sorted(self.hooks),
            "native": shim,
        }
        self._post(framing.encode(offer), [os.dup(runs.fileno())])
        runs.close()

    def exited(self, pid: int, status: int, usage: Any) -> None:
        """A warm child ended: with a run handed to it (its report pipe says so), whose
        claim may not have been read yet (the run is answered once it is), or without one
        (let go by the host, killed with its cgroup): then it is forgotten."""
        warm = self.offered.pop(pid)
        try:
            report = os.read(warm.report, 512)
        except OSError:
            report = b""
        if not report.startswith(child.HANDED):
            os.close(warm.report)
            return
        # Bounded: a claim that never comes (the host interrupted between the two sends)
        # must not make this grow.
        while len(self.unclaimed) >= MAX_WARM:
            os.close(self.unclaimed.pop(next(iter(self.unclaimed)))[0].report)
        self.unclaimed[warm.pid] = (warm, report, status, usage)

    def claim(self, pid: int) -> tuple[Warm, tuple[bytes, int, Any] | None] | None:
        """The warm child `pid`, now a run (see `helper`'s claims), and, when it ended
        already, what its report pipe held, its wait status and rusage; None when it is
        not known (it ended before a run came to it)."""
        warm = self.offered.pop(pid, None)
        ended = self.unclaimed.pop(pid, None)
        if ended is not None:
            return ended[0], ended[1:]
        return None if warm is None else (warm, None)

    def prepare_pooled(self, groups: list[list[str]], like: Like) -> None:
        """Warm children for pooled cgroups (from a prepare frame, or the `prepare` field of a
        spawn request or claim), prepared like `like` only when the last such hint named a
        like one (see the module's docstring)."""
        if not groups:
            return
        if like.ahead != self.last_prepare:  # another policy than the last
            self.last_prepare = like.ahead
            like = GENERIC
        for group in groups:
            self.want(tuple(group), like)

    def discard(self) -> None:
        """Kill every warm child offered, and forget those that ended unclaimed."""
        for warm in self.offered.values():
            warm.discard()
        self.offered.clear()
        for warm, *_ in self.unclaimed.values():
            os.close(warm.report)
        self.unclaimed.clear()
