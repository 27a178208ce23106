"""The spawn helper: a small long-lived process that forks and execs on the host's behalf.

Why a helper: the child-side work (rlimits, umask, cgroup join, Landlock, seccomp) must run
between fork and exec, and Python can only do that with `preexec_fn`, which forces a real
`fork()` of the calling process. Its cost grows with the caller's heap (58 ms from a 2 GiB
agent host). This helper stays small, so its fork costs the same whatever the host holds.
It is also the child subreaper of every run, so processes that `setsid` or double-fork
are re-parented to it, killed at the end of their run, and reaped (no zombies even where
pid 1 does not reap).

Protocol (see `framing`): the client sends `spawn` frames on the control socket with the
run's own socket and its stdio attached. When the run's process is gone, the helper answers
on the run socket with `failed` (errno, stage: it never exec'd), or with `started` (pid)
followed by `exited` (wait status, rusage). The helper does not wait for the exec to answer
`started` early: the client supervises the run from the moment it is submitted. A `kill`
frame on the run socket, or the run socket closing, kills the run's whole tree.
The control socket closing (the host exited or died) kills every run and ends the helper.

Warm children (see `warm`): a child started ahead of time, which the helper offers to the
host; the host sends a run straight to it, then its socket to the helper in a `claim`,
and the helper owns that run as if it had forked it.

The helper's parts: this module serves the host (requests, claims, runs, their end),
`child` is what a child runs between fork and exec, `warm` keeps the warm children, and
`proctree` walks and kills the process trees of runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import sys

from mechasandbox.runner import child, framing, native, proctree
from mechasandbox.runner.warm import Like, WarmChildren

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the helper does not import `typing`
if TYPE_CHECKING:
    from typing import Any

    from mechasandbox.runner.child import ChildHook


class _HostGone(Exception):
    """The control socket closed (or carried something that is not a frame)."""


class Run:
    """A run of the helper. `report`: the read end of the child's report pipe (close-on-exec
    in the child), read when the child is gone (`reported`: what was read, when that came
    first); `failed`: it never exec'd."""

    __slots__ = ("failed", "on_host_loss", "pid", "report", "reported", "sock")

    def __init__(self, pid: int, sock: socket.socket, report: int, request: dict[str, Any]) -> None:
        self.pid = pid
        self.sock = sock
        self.report: int | None = report
        self.reported: bytes | None = None
        self.failed = False
        # (argv, env) started if the host goes away while the run is live (see `_shutdown`)
        argv = request.get("on_host_loss") or []
        self.on_host_loss = (list(argv), dict(request.get("env", ()))) if argv else None


class Helper:
    """Serves one host on `control` until it goes away (`serve`), then kills what is left.
    `shim`: the exec shim warm children are started from (see `native`), None: forked."""

    def __init__(self, control: socket.socket, shim: str | None = None) -> None:
        self.control = control
        self.runs: dict[int, Run] = {}
        self.hooks: dict[str, ChildHook] = {}
        # What runs whose host went away left to start once we shut down (see `Run`).
        self.abandoned: list[tuple[list[str], dict[str, str]]] = []
        # Frames for the host not sent yet (the control socket was full), with their fds.
        self.outbox: list[tuple[bytes, list[int]]] = []
        self.my_pid = os.getpid()
        self.warm = WarmChildren(shim, self.hooks, self._post, self.my_pid)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    # --- process tree ---------------------------------------------------------------------
    def _strays(self) -> list[int]:
        """Children of the helper that are not run roots: orphans whose run already ended,
        or processes that escaped their run's session. Processes still in a live run's
        session are left to that run's end."""
        live_sessions = set(self.runs)
        strays: list[int] = []
        for pid in proctree.children_of(self.my_pid):
            if pid in self.runs or pid in self.warm:
                continue
            try:
                session = os.getsid(pid)
            except OSError:
                continue
            if session not in live_sessions:
                strays.append(pid)
        return strays

    def _kill_tree(self, roots: list[int]) -> None:
        proctree.kill_tree(roots, me=self.my_pid, reap=self._reap)

    def _kill_run(self, run: Run) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.pid, signal.SIGKILL)
        self._kill_tree([run.pid])

    # --- spawning -------------------------------------------------------------------------
    def _spawn(self, request: dict[str, Any], fds: list[int]) -> None:
        """Start the run's child and return at once, without waiting for its exec: the
        helper can take the next request while this child sets up, and the run's start is
        settled when it exits (see `_settle`), which saves a round trip per run. (A run the
        host handed to a warm child itself comes as that child's claim instead.)"""
        run_sock = socket.socket(fileno=fds[0])
        run_sock.set_inheritable(False)
        stdio = fds[1:4]
        report_r = report_w = -1
        try:
            ahead, hooks = self._hooks_of(request)
            key = tuple(request.get("cgroup_procs", ()))
            launch = child.Launch(request)
            report_r, report_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(report_r)
                child.exec_run(launch, stdio, hooks, report_w, ahead=ahead)
            os.close(report_w)
            self.warm.prepare_after(key, Like(request), request.get("prepare", []))
        except Exception as error:  # a bad request must not kill the helper
            for fd in (report_r, report_w):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            framing.send(run_sock, {"event": "failed", "errno": errno.EIO, "stage": repr(error)})
            run_sock.close()
            return
        finally:
            for fd in stdio:
                os.close(fd)
        self.runs[pid] = Run(pid, run_sock, report_r, request)

    def _hooks_of(
        self, request: dict[str, Any]
    ) -> tuple[list[tuple[ChildHook, Any]], list[tuple[ChildHook, Any]]]:
        """The request's ahead hooks and other hooks, with their arguments. Their modules,
        and those of its rehearsals, are loaded here, so that later children inherit them."""

        def loaded(spec: str) -> ChildHook:
            if spec not in self.hooks:
                self.hooks[spec] = child.load_hook(spec)
            return self.hooks[spec]

        ahead = [(loaded(spec), argument) for spec, argument in request.get("ahead", ())]
        hooks = [(loaded(spec), argument) for spec, argument in request.get("hooks", ())]
        for spec, _ in request.get("rehearsals", ()):
            loaded(spec)
        return ahead, hooks

    # --- the host's frames and claims ----------------------------------------------------
    def _post(self, frame: bytes, fds: list[int]) -> None:
        """Send `frame` to the host without ever blocking: the host reads the control
        socket only when it submits, and a helper blocked on a full socket could not answer
        the run the host is waiting for. What does not fit waits in `outbox`."""
        self.outbox.append((frame, fds))
        self._flush()

    def _flush(self) -> None:
        while self.outbox:
            frame, fds = self.outbox[0]
            try:
                sent = self.control.sendmsg([frame], framing.rights(fds), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the host is gone: the control socket's EOF ends us
                sent = len(frame)
            for fd in fds:  # sent with the first byte
                os.close(fd)
            if sent < len(frame):
                self.outbox[0] = (frame[sent:], [])
            else:
                self.outbox.pop(0)

    def _on_claim(self, claim: dict[str, Any], fds: list[int]) -> None:
        """The host handed a run to the warm child `claim["pid"]` (see `client`), and sends
        the run's socket: that child is a run from now on (or was: a run can end before its
        claim is read). If the child ended before it could take the run (killed with its
        cgroup), the run is answered as not started."""
        for fd in fds[1:]:
            os.close(fd)
        if not fds:
            return
        run_sock = socket.socket(fileno=fds[0])
        run_sock.set_inheritable(False)
        pid = claim.get("pid", 0)
        claimed = self.warm.claim(pid)
        if claimed is None:
            with contextlib.suppress(OSError):
                framing.send(run_sock, {"event": "failed", "errno": errno.EIO, "stage": "setup"})
            run_sock.close()
            return
        warm, ended = claimed
        like = warm.like if warm.like.ahead is not None else Like(claim)
        self.warm.prepare_after(warm.key, like, claim.get("prepare", []))
        run = Run(pid, run_sock, warm.report, claim)
        if ended is None:
            self.runs[pid] = run
            return
        run.reported, status, usage = ended
        self._finish(run, status, usage)

    def _settle(self, run: Run) -> bytes:
        """Called once the child is gone: its report pipe holds the failure before exec, or
        nothing (it exec'd); a warm child's starts with `child.HANDED`. The frame telling the
        client how the start went: `failed`, or `started` (sent with `exited`, in one
        write)."""
        if run.report is None:
            return b""
        try:
            failure = run.reported if run.reported is not None else os.read(run.report, 512)
        finally:
            os.close(run.report)
            run.report = None
        failure = failure.removeprefix(child.HANDED)
        if failure:
            code, _, stage = failure.decode().partition(":")
            run.failed = True
            return framing.encode({"event": "failed", "errno": int(code), "stage": stage})
        return framing.encode({"event": "started", "pid": run.pid})

    # --- reaping --------------------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.warm:
                self.warm.exited(pid, status, usage)
            run = self.runs.pop(pid, None)
            if run is not None:  # else a warm child, or an orphan
                self._finish(run, status, usage)

    def _finish(self, run: Run, status: int, usage: Any) -> None:
        """The run's process is gone: kill what it left behind, answer the host."""
        answer = self._settle(run)
        # Nothing outlives a run: whatever it left behind dies now. Its own children
        # were re-parented to us (subreaper), so they are among the strays; the reaped
        # pid itself has no /proc entry left to walk.
        strays = self._strays()
        if strays:
            self._kill_tree(strays)
        if not run.failed:
            maxrss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            answer += framing.encode(
                {
                    "event": "exited",
                    "status": status,
                    "cpu_s": usage.ru_utime + usage.ru_stime,
                    "max_rss_bytes": maxrss,
                }
            )
        with contextlib.suppress(OSError):
            run.sock.sendall(answer)
        run.sock.close()

    def _on_run_message(self, run: Run) -> None:
        try:
            message, _ = framing.receive(run.sock)
        except (framing.FrameError, OSError):
            message = {"op": "kill"}  # the client went away: nothing may outlive it
            if run.on_host_loss is not None:  # started once we are shutting down too
                self.abandoned.append(run.on_host_loss)
                run.on_host_loss = None
        if message.get("op") == "kill":
            self._kill_run(run)

    def _shutdown(self) -> None:
        self.warm.discard()
        for _, fds in self.outbox:
            for fd in fds:
                os.close(fd)
        self.outbox.clear()
        left = self.abandoned
        for run in list(self.runs.values()):
            self._kill_run(run)
            if run.report is not None:
                os.close(run.report)
                run.report = None
            if run.on_host_loss is not None:
                left.append(run.on_host_loss)
        self._kill_tree(proctree.children_of(self.my_pid))
        self._reap()
        for argv, env in left:  # after the kill of every child: these must outlive us
            _start_detached(argv, env)

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, _ignore)
        with contextlib.suppress(_HostGone):
            while True:
                self._serve_once()
        self._shutdown()

    def _serve_once(self) -> None:
        """Wait for something to do (or prepare a warm child when there is nothing), do it."""
        self._reap()
        by_fd = {run.sock.fileno(): run for run in self.runs.values()}
        watched: list[int] = [self.control.fileno(), self.wake_r, *by_fd]
        sending = [self.control.fileno()] if self.outbox else []
        # Warm children are prepared only when nothing else is waiting and no run is
        # going: forking one would compete with a run for the CPU.
        preparing = bool(self.warm.wanted) and not self.runs
        readable, writable, _ = select.select(watched, sending, [], 0 if preparing else None)
        if not readable and not writable and preparing:
            # A run was just answered: the host, woken by it, often waits for this CPU
            # (placed where its waker runs); let it go first, the fork can wait that long.
            os.sched_yield()
            self.warm.prepare_next()
            return
        if writable:
            self._flush()
        if self.wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 4096)
        for fd in readable:
            if fd in by_fd and by_fd[fd].pid in self.runs:
                self._on_run_message(by_fd[fd])
        if self.control.fileno() in readable:
            self._on_control()

    def _on_control(self) -> None:
        """A frame from the host: a spawn request, a claim, or a prepare hint. Raises
        `_HostGone` when the host is gone (or sent something that is not a frame)."""
        try:
            request, fds = framing.receive(self.control)
        except (framing.FrameError, OSError, ValueError) as error:
            raise _HostGone from error
        if request.get("op") == "claim":
            self._on_claim(request, fds)
            return
        if request.get("op") != "prepare":
            self._spawn(request, fds)
            return
        self.warm.prepare_pooled(request["cgroups"], Like(request))
        for fd in fds:  # none are expected
            os.close(fd)


def main() -> None:
    control = socket.socket(fileno=int(os.environ.pop(framing.CONTROL_FD_ENV)))
    # No PR_SET_PDEATHSIG here: it follows the host *thread* that started us, not the host
    # process. The host dying closes the control socket, and that ends us (and our runs).
    control.set_inheritable(False)
    child.prctl(child.PR_SET_CHILD_SUBREAPER, 1)
    shim = os.environ.pop(native.SHIM_ENV, "")
    # Children start with default dispositions and an empty mask without any work between
    # fork and exec: signals the helper wants to survive are *caught* by a no-op handler
    # (exec resets caught signals to their defaults, while an ignored one would stay
    # ignored), the rest are defaults, and the mask is cleared once here.
    for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
        # SIGINT: Ctrl-C reaches the host, which tells us. SIGPIPE, SIGXFSZ: a failed write
        # raises instead (as with Python's usual SIG_IGN).
        signal.signal(sig, _ignore)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    usable = os.path.isabs(shim) and native.speaks_protocol(shim)
    Helper(control, shim if usable else None).serve()
    # Every run is dead and reaped: skip the interpreter's teardown, the host may be
    # waiting for us to exit.
    os._exit(0)


def _start_detached(argv: list[str], env: dict[str, str]) -> None:
    """`argv` in a session of its own, reparented away from the helper (which exits next),
    its stdio on /dev/null; not waited for. Failures are silent: the next process's sweep
    (`lifeline`) is there for what this misses."""
    with contextlib.suppress(OSError):
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                if os.fork() == 0:
                    null = os.open(os.devnull, os.O_RDWR)
                    for fd in (0, 1, 2):
                        os.dup2(null, fd)
                    os.closerange(3, 65536)
                    os.execve(argv[0], argv, env)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)


def _ignore(_signum: int, _frame: object) -> None:
    """A caught no-op: ignored by the helper, reset to the default by exec."""


if __name__ == "__main__":
    main()
