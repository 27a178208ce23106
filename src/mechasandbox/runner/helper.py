"""The spawn helper: a small long-lived process that forks and execs on the host's behalf.

Why a helper: the child-side work (rlimits, umask, cgroup join, Landlock, seccomp) must run
between fork and exec, and Python can only do that with `preexec_fn`, which forces a real
`fork()` of the calling process. Its cost grows with the caller's heap (58 ms from a 2 GiB
agent host). This helper stays small, so its fork costs the same whatever the host holds.
It is also the child subreaper of every run, so processes that `setsid` or double-fork
are re-parented to it, killed at the end of their run, and reaped (no zombies even where
pid 1 does not reap).

Protocol (see `framing`): the client sends `spawn` frames on the control socket with the
run's own socket and its stdio attached; the helper answers on the run socket with
`started` (pid) or `failed` (errno, stage), and later `exited` (wait status, rusage). A
`kill` frame on the run socket, or the run socket closing, kills the run's whole tree.
The control socket closing (the host exited or died) kills every run and ends the helper.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import os
import resource
import select
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from mechasandbox.runner import framing, proctree_darwin

CONTROL_FD_ENV = "MECHASANDBOX_HELPER_FD"
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_IS_LINUX = sys.platform.startswith("linux")

ChildHook = Callable[[Any], None]


_LIBC = ctypes.CDLL(None, use_errno=True) if _IS_LINUX else None


def _prctl(option: int, value: int) -> None:
    if _LIBC is None:
        return
    if _LIBC.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _load_hook(spec: str) -> ChildHook:
    module_name, _, attribute = spec.partition(":")
    hook: ChildHook = getattr(importlib.import_module(module_name), attribute)
    return hook


class _ChildSetupError(Exception):
    def __init__(self, stage: str, error: OSError) -> None:
        super().__init__(stage)
        self.stage = stage
        self.errno = error.errno or errno.EIO


def _child(
    request: dict[str, Any], stdio: list[int], hooks: list[tuple[ChildHook, Any]], report_fd: int
) -> None:
    """Runs in the forked child: set everything up, then exec. Never returns."""
    stage = "setsid"
    try:
        os.setsid()
        stage = "pdeathsig"
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        stage = "stdio"
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        # Keep only 0-2 and the report pipe (close-on-exec): nothing of the host leaks in.
        os.closerange(3, report_fd)
        os.closerange(report_fd + 1, 65536)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        stage = "chdir"
        os.chdir(request["cwd"])
        stage = "umask"
        os.umask(int(request.get("umask", 0o077)))
        stage = "cgroup"
        for procs_file in request.get("cgroup_procs", ()):
            with open(procs_file, "w") as handle:
                handle.write("0")
        stage = "rlimit"
        for name, soft, hard in request.get("rlimits", ()):
            resource.setrlimit(getattr(resource, name), (soft, hard))
        for hook, argument in hooks:
            stage = "hook"
            hook(argument)
        stage = "exec"
        env = dict(request["env"])
        argv = list(request["argv"])
        executable = request.get("executable") or argv[0]
        if os.sep in executable:
            os.execve(executable, argv, env)
        os.execvpe(executable, argv, env)
    except OSError as error:
        os.write(report_fd, f"{error.errno or errno.EIO}:{stage}".encode())
    except BaseException:
        os.write(report_fd, f"{errno.EIO}:{stage}".encode())
    finally:
        os._exit(127)


class _Run:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock


class Helper:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.runs: dict[int, _Run] = {}
        self.hooks: dict[str, ChildHook] = {}
        self.my_pid = os.getpid()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    # --- process tree ---------------------------------------------------------------------
    @staticmethod
    def _children(pid: int) -> list[int]:
        if sys.platform == "darwin":  # no /proc: the sysctl process table
            return proctree_darwin.children_of(pid)
        if not _IS_LINUX:
            return []
        found: list[int] = []
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                    found.extend(int(p) for p in f.read().split())
        return found

    def _tree(self, roots: list[int]) -> list[int]:
        seen: list[int] = []
        pending = list(roots)
        while pending:
            pid = pending.pop()
            if pid in seen:
                continue
            seen.append(pid)
            pending.extend(self._children(pid))
        return seen

    def _strays(self) -> list[int]:
        """Children of the helper that are not run roots: orphans whose run already ended,
        or processes that escaped their run's session. Processes still in a live run's
        session are left to that run's end."""
        live_sessions = set(self.runs)
        strays: list[int] = []
        for pid in self._children(self.my_pid):
            if pid in self.runs:
                continue
            try:
                session = os.getsid(pid)
            except OSError:
                continue
            if session not in live_sessions:
                strays.append(pid)
        return strays

    def _kill_tree(self, roots: list[int]) -> None:
        """SIGKILL `roots` and every descendant, repeating until no new process appears
        (a process may fork while we walk). Killed orphans are re-parented to us and reaped
        by the SIGCHLD loop."""
        for _ in range(50):
            pids = [p for p in self._tree(roots) if p != self.my_pid]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            roots = [p for p in pids if os.path.exists(f"/proc/{p}")] if _IS_LINUX else []
            self._reap()

    def _kill_run(self, run: _Run) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.pid, signal.SIGKILL)
        self._kill_tree([run.pid])

    # --- spawning -------------------------------------------------------------------------
    def _spawn(self, request: dict[str, Any], fds: list[int]) -> None:
        run_sock = socket.socket(fileno=fds[0])
        stdio = fds[1:4]
        try:
            hooks = []
            for spec, argument in request.get("hooks", ()):
                if spec not in self.hooks:
                    self.hooks[spec] = _load_hook(spec)
                hooks.append((self.hooks[spec], argument))
            report_r, report_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(report_r)
                _child(request, stdio, hooks, report_w)
            os.close(report_w)
            with os.fdopen(report_r, "rb") as report:
                failure = report.read()
        except Exception as error:  # a bad request must not kill the helper
            framing.send(run_sock, {"event": "failed", "errno": errno.EIO, "stage": repr(error)})
            run_sock.close()
            return
        finally:
            for fd in stdio:
                os.close(fd)
        if failure:
            code, _, stage = failure.decode().partition(":")
            os.waitpid(pid, 0)
            framing.send(run_sock, {"event": "failed", "errno": int(code), "stage": stage})
            run_sock.close()
            return
        self.runs[pid] = _Run(pid, run_sock)
        framing.send(run_sock, {"event": "started", "pid": pid})

    # --- reaping --------------------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.runs.pop(pid, None)
            if run is None:
                continue  # an orphan we killed or that ended by itself
            # Nothing outlives a run: whatever it left behind dies now.
            self._kill_tree([pid, *self._strays()])
            maxrss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            with contextlib.suppress(OSError):
                framing.send(
                    run.sock,
                    {
                        "event": "exited",
                        "status": status,
                        "cpu_s": usage.ru_utime + usage.ru_stime,
                        "max_rss_bytes": maxrss,
                    },
                )
            run.sock.close()

    def _on_run_message(self, run: _Run) -> None:
        try:
            message, _ = framing.receive(run.sock)
        except (framing.FrameError, OSError):
            message = {"op": "kill"}  # the client went away: nothing may outlive it
        if message.get("op") == "kill":
            self._kill_run(run)

    def _shutdown(self) -> None:
        for run in list(self.runs.values()):
            self._kill_run(run)
        self._kill_tree(self._children(self.my_pid))
        self._reap()

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        while True:
            self._reap()
            by_fd = {run.sock.fileno(): run for run in self.runs.values()}
            watched: list[int] = [self.control.fileno(), self.wake_r, *by_fd]
            readable, _, _ = select.select(watched, [], [])
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            for fd in readable:
                if fd in by_fd and by_fd[fd].pid in self.runs:
                    self._on_run_message(by_fd[fd])
            if self.control.fileno() in readable:
                try:
                    request, fds = framing.receive(self.control)
                except (framing.FrameError, OSError):
                    self._shutdown()
                    return
                self._spawn(request, fds)


def main() -> None:
    control = socket.socket(fileno=int(os.environ.pop(CONTROL_FD_ENV)))
    # No PR_SET_PDEATHSIG here: it follows the host *thread* that started us, not the host
    # process. The host dying closes the control socket, and that ends us (and our runs).
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the host, which tells us
    Helper(control).serve()


if __name__ == "__main__":
    main()
