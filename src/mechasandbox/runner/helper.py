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

Warm children: a `prepare` frame (cgroup.procs files, no fds) asks for a child started
ahead of time that joins those cgroups and then waits for a run. Where the exec shim is
built (see `native`), that child is the shim, started with `posix_spawn`, which takes any
run that has a native form and applies everything once it has come (it is prepared like
nothing: `_GENERIC`); otherwise, and for runs the shim cannot carry, it is forked. On
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
import ctypes
import errno
import fcntl
import importlib
import os
import resource
import select
import signal
import socket
import sys
import time

from mechasandbox.runner import framing, native, proctree_darwin

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the helper does not import `typing`
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

    ChildHook: TypeAlias = Callable[[Any], None]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_IS_LINUX = sys.platform.startswith("linux")
# Warm children waiting at once (one per pooled cgroup, plus those without cgroups, each
# prepared like a different request; the host lets go of those it keeps no more).
_MAX_WARM = 16
# What a warm child writes to its report pipe once the host handed it a run (a failure to
# report may follow).
_HANDED = b"+"
# How long killing a run's tree waits for the killed processes to exit.
_KILL_WAIT_S = 2.0

_LIBC = ctypes.CDLL(None, use_errno=True) if _IS_LINUX else None


def _prctl(option: int, value: int) -> None:
    if _LIBC is None:
        return
    if _LIBC.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _load_hook(spec: str) -> ChildHook:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        if "site" in sys.modules:
            raise
        import site  # the helper starts without it (`-S`): a hook from site-packages

        site.main()
        module = importlib.import_module(module_name)
    hook: ChildHook = getattr(module, attribute)
    return hook


def _wait_exited(pids: list[int], deadline: float) -> None:
    """Block until each of `pids` has exited (a zombie counts) or `deadline` has passed.
    Linux: on pidfds, waking when the last one exits; elsewhere: a short sleep."""
    if not hasattr(os, "pidfd_open"):
        time.sleep(0.001)
        return
    poller = select.poll()
    pidfds: list[int] = []
    try:
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:  # gone already
                continue
            pidfds.append(pidfd)
            poller.register(pidfd, select.POLLIN)
        waiting = len(pidfds)
        while waiting:
            left_ms = (deadline - time.monotonic()) * 1000
            if left_ms <= 0:
                return
            events = poller.poll(max(1, int(left_ms)))
            for fd, _ in events:
                poller.unregister(fd)
                waiting -= 1
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


def _running(pid: int) -> bool:
    """Still there and not a zombie (Linux: its /proc state; elsewhere any process)."""
    if not _IS_LINUX:
        return _exists(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _exists(pid: int) -> bool:
    """Still in the process table (possibly a zombie not yet reaped), on any platform."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _HostGone(Exception):
    """The control socket closed (or carried something that is not a frame)."""


class _Launch:
    """A spawn request decoded in the helper, so that the forked child has little to do:
    every Python object it touches after the fork is a page the kernel must copy."""

    __slots__ = ("argv", "cgroup_procs", "cwd", "env", "executable", "rlimits", "umask")

    def __init__(self, request: dict[str, Any]) -> None:
        self.argv: list[str] = list(request["argv"])
        self.env: dict[str, str] = dict(request["env"])
        self.executable: str = request.get("executable") or self.argv[0]
        self.cwd: str = request["cwd"]
        self.umask = int(request.get("umask", 0o077))
        self.cgroup_procs: list[bytes] = [os.fsencode(p) for p in request.get("cgroup_procs", ())]
        self.rlimits: list[tuple[int, tuple[int, int]]] = [
            (getattr(resource, name), (int(soft), int(hard)))
            for name, soft, hard in request.get("rlimits", ())
        ]


def _child(
    launch: _Launch,
    stdio: list[int],
    hooks: list[tuple[ChildHook, Any]],
    report_fd: int,
    *,
    ahead: list[tuple[ChildHook, Any]] | None = None,
    detached: bool = False,
) -> None:
    """Runs in the forked child: set everything up, then exec. Never returns.

    `ahead`: hooks applied before the rlimits (a warm child applies them while it waits,
    in that same place of the order). `detached`: a warm child, which has set the session
    and the parent-death signal and joined its cgroups already (`launch` has none left).
    Signal dispositions need no work here: the helper catches (rather than ignores) the
    signals it handles, and exec resets caught signals to their defaults; its signal mask
    is empty (see `main`)."""
    stage = "setsid"
    try:
        if not detached:
            os.setsid()
            stage = "pdeathsig"
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        stage = "stdio"
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        # Keep only 0-2 and the report pipe (close-on-exec): nothing of the host leaks in.
        os.closerange(3, report_fd)
        os.closerange(report_fd + 1, 65536)
        stage = "chdir"
        os.chdir(launch.cwd)
        stage = "umask"
        os.umask(launch.umask)
        stage = "cgroup"
        _join(launch.cgroup_procs)
        for hook, argument in ahead or ():
            stage = "hook"
            hook(argument)
        stage = "rlimit"
        for which, limits in launch.rlimits:
            resource.setrlimit(which, limits)
        for hook, argument in hooks:
            stage = "hook"
            hook(argument)
        stage = "exec"
        if os.sep in launch.executable:
            os.execve(launch.executable, launch.argv, launch.env)
        os.execvpe(launch.executable, launch.argv, launch.env)
    except OSError as error:
        os.write(report_fd, f"{error.errno or errno.EIO}:{stage}".encode())
    except BaseException:
        os.write(report_fd, f"{errno.EIO}:{stage}".encode())
    finally:
        os._exit(127)


def _join(procs_files: list[bytes]) -> None:
    for procs_file in procs_files:
        procs = os.open(procs_file, os.O_WRONLY)
        try:
            os.write(procs, b"0")
        finally:
            os.close(procs)


def _ahead_of(request: dict[str, Any]) -> list[Any] | None:
    """What a warm child can apply before `request` comes: its ahead hooks, or None. (Not
    the rlimits: a low RLIMIT_NOFILE or RLIMIT_AS would get in the way of receiving and
    decoding the request itself.)"""
    ahead: list[Any] | None = request.get("ahead") or None
    return ahead


def _apply_ahead(ahead: list[Any], hooks: dict[str, ChildHook]) -> None:
    for spec, argument in ahead:
        (hooks.get(spec) or _load_hook(spec))(argument)


class _Like:
    """What a warm child is prepared like (see the module's docstring): the `_ahead_of` of
    the requests it can take (None: any request), and the rehearsals it calls while it
    waits."""

    __slots__ = ("ahead", "rehearsals")

    def __init__(self, request: dict[str, Any]) -> None:
        self.ahead = _ahead_of(request)
        self.rehearsals: list[Any] = [[s, a] for s, a in request.get("rehearsals", ())]


_GENERIC = _Like({})


def _rehearse(rehearsals: list[Any], hooks: dict[str, ChildHook]) -> None:
    for spec, argument in rehearsals:
        with contextlib.suppress(BaseException):  # a rehearsal that failed changed nothing
            (hooks.get(spec) or _load_hook(spec))(argument)


def _warm_child(
    procs_files: list[bytes],
    runs: socket.socket,
    hooks: dict[str, ChildHook],
    report_fd: int,
    ahead: list[Any] | None,
    rehearsals: list[Any],
) -> None:
    """Runs in a warm child: leave the helper's session, join the cgroups, apply `ahead`
    (see `_ahead_of`), then wait for a spawn request with its stdio on `runs` (from the host,
    which the helper offered this child; the run's socket goes to the helper in the host's
    `claim`), mark the report pipe (`_HANDED`), and carry the request out as `_child`
    does. The host closing `runs` instead ends it. Never returns. The host hands it only
    requests whose `_ahead_of` equals `ahead` (any request when `ahead` is None).

    Once a request came, every failure goes to the report pipe as in `_child` (a join or an
    ahead hook that failed earlier included), so that the run is reported as not started,
    never as a run that exited with status 0."""
    failed: tuple[str, OSError] | None = None
    stage = "cgroup"
    try:
        os.setsid()
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        _join(procs_files)
        if ahead is not None:
            stage = "hook"
            _apply_ahead(ahead, hooks)
    except OSError as error:
        failed = (stage, error)
    except BaseException:
        failed = (stage, OSError(errno.EIO, stage))
    if failed is None:
        _rehearse(rehearsals, hooks)
    try:
        request, stdio = framing.receive(runs)
    except framing.PeerClosed:
        os._exit(0)  # the host let this child go: no run was handed to it
    except BaseException as error:  # a run came but could not be read: not started
        os.write(
            report_fd, _HANDED + f"{getattr(error, 'errno', None) or errno.EIO}:setup".encode()
        )
        os._exit(127)
    os.write(report_fd, _HANDED)
    runs.close()
    if failed is not None:
        os.write(report_fd, f"{failed[1].errno or errno.EIO}:{failed[0]}".encode())
        os._exit(127)
    stage = "setup"
    try:
        launch = _Launch(request)
        launch.cgroup_procs = []  # joined already: a second join would wait again
        stage = "hook"
        chosen = [
            (hooks.get(spec) or _load_hook(spec), argument)
            for spec, argument in request.get("hooks", ())
        ]
        # Applied while waiting, or (a generic child) now, in the same place of the order.
        late = [] if ahead is not None else request.get("ahead", ())
        late_ahead = [(hooks.get(spec) or _load_hook(spec), argument) for spec, argument in late]
    except OSError as error:
        os.write(report_fd, f"{error.errno or errno.EIO}:{stage}".encode())
        os._exit(127)
    except BaseException:
        os.write(report_fd, f"{errno.EIO}:{stage}".encode())
        os._exit(127)
    _child(launch, stdio, chosen, report_fd, ahead=late_ahead, detached=True)


class _Warm:
    """A warm child offered to the host: `report` as in `_Run`, `key`: the cgroups it
    joined, `like`: what it was prepared like."""

    __slots__ = ("key", "like", "pid", "report")

    def __init__(self, pid: int, report: int, key: tuple[str, ...], like: _Like) -> None:
        self.pid = pid
        self.report = report
        self.key = key
        self.like = like

    def discard(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.close(self.report)


class _Run:
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
    def __init__(self, control: socket.socket, shim: str | None = None) -> None:
        self.control = control
        # The exec shim warm children are started from (see `native`), None: forked.
        self.shim = shim
        self.runs: dict[int, _Run] = {}
        self.hooks: dict[str, ChildHook] = {}
        # Warm children offered to the host, by pid, and those still to prepare (by the
        # cgroup.procs files they join, () for none) once the helper has nothing else to do.
        self.warm: dict[int, _Warm] = {}
        self.wanted: list[tuple[tuple[str, ...], _Like]] = []
        # Warm children handed a run that ended before its claim was read: the child, what
        # its report pipe held, its wait status and rusage.
        self.unclaimed: dict[int, tuple[_Warm, bytes, int, Any]] = {}
        # What runs whose host went away left to start once we shut down (see `_Run`).
        self.abandoned: list[tuple[list[str], dict[str, str]]] = []
        # Frames for the host not sent yet (the control socket was full), with their fds.
        self.outbox: list[tuple[bytes, list[int]]] = []
        self.last_prepare: list[Any] | None = None  # `_ahead_of` the last prepare frame
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
        """SIGKILL `roots` and every descendant, repeating until no new process appears
        (a process may fork while we walk), and wait until the killed ones have exited:
        a process dies some time after SIGKILL (a sandbox's pid 1 first tears down its
        namespaces and kills what is left in them), and the run is not over before. Bounded by
        `_KILL_WAIT_S` and 50 rounds: a process stuck in the kernel, or one we may not kill,
        must not stall the helper.
        Killed orphans are re-parented to us and reaped here or by the SIGCHLD loop."""
        deadline = time.monotonic() + _KILL_WAIT_S
        for _ in range(50):
            pids = [p for p in self._tree(roots) if p != self.my_pid]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            _wait_exited(pids, deadline)
            self._reap()
            # A zombie has exited: it is reaped by its parent, or by us once it is ours.
            roots = [p for p in pids if _running(p)]
            if time.monotonic() >= deadline:
                return

    def _kill_run(self, run: _Run) -> None:
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
            launch = _Launch(request)
            report_r, report_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(report_r)
                _child(launch, stdio, hooks, report_w, ahead=ahead)
            os.close(report_w)
            like = _Like(request)
            if not key:  # the next run like this one without cgroups finds a child ready
                self._want(key, like)
            self._prepare_pooled(request.get("prepare", []), like)
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
        self.runs[pid] = _Run(pid, run_sock, report_r, request)

    def _hooks_of(
        self, request: dict[str, Any]
    ) -> tuple[list[tuple[ChildHook, Any]], list[tuple[ChildHook, Any]]]:
        """The request's ahead hooks and other hooks, with their arguments. Their modules,
        and those of its rehearsals, are loaded here, so that later children inherit them."""

        def loaded(spec: str) -> ChildHook:
            if spec not in self.hooks:
                self.hooks[spec] = _load_hook(spec)
            return self.hooks[spec]

        ahead = [(loaded(spec), argument) for spec, argument in request.get("ahead", ())]
        hooks = [(loaded(spec), argument) for spec, argument in request.get("hooks", ())]
        for spec, _ in request.get("rehearsals", ()):
            loaded(spec)
        return ahead, hooks

    # --- warm children ----------------------------------------------------------------------
    def _want(self, key: tuple[str, ...], like: _Like) -> None:
        if self.shim is not None:  # a shim child applies everything once its run has come
            like = _GENERIC
        if any(w.key == key and w.like.ahead == like.ahead for w in self.warm.values()):
            return
        if not any(k == key and w.ahead == like.ahead for k, w in self.wanted):
            self.wanted.append((key, like))

    def _prepare(self, key: tuple[str, ...], like: _Like) -> None:
        """Fork a warm child for `key`, prepared like `like` (see the module's docstring),
        and offer it to the host (see `_offer`)."""
        if any(w.key == key and w.like.ahead == like.ahead for w in self.warm.values()):
            return
        if len(self.warm) >= _MAX_WARM:
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
            _warm_child(
                [os.fsencode(p) for p in key],
                runs_child,
                self.hooks,
                report_w,
                like.ahead,
                like.rehearsals,
            )
        runs_child.close()
        os.close(report_w)
        self.warm[pid] = _Warm(pid, report_r, key, like)
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
                [self.shim, str(self.my_pid), *key],
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
        like: _Like,
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
        warm = self.warm.pop(pid, None)
        ended = self.unclaimed.pop(pid, None)
        if ended is not None:
            warm = ended[0]
        if warm is None:
            with contextlib.suppress(OSError):
                framing.send(run_sock, {"event": "failed", "errno": errno.EIO, "stage": "setup"})
            run_sock.close()
            return
        like = warm.like if warm.like.ahead is not None else _Like(claim)
        if not warm.key:  # the next run like this one finds a child ready
            self._want((), like)
        self._prepare_pooled(claim.get("prepare", []), like)
        run = _Run(pid, run_sock, warm.report, claim)
        if ended is None:
            self.runs[pid] = run
            return
        run.reported = ended[1]
        self._finish(run, ended[2], ended[3])

    def _on_warm_exit(self, warm: _Warm, status: int, usage: Any) -> None:
        """A warm child ended: with a run handed to it (its report pipe says so), whose
        claim may not have been read yet (the run is answered once it is), or without one
        (let go by the host, killed with its cgroup): then it is forgotten."""
        del self.warm[warm.pid]
        try:
            report = os.read(warm.report, 512)
        except OSError:
            report = b""
        if not report.startswith(_HANDED):
            os.close(warm.report)
            return
        # Bounded: a claim that never comes (the host interrupted between the two sends)
        # must not make this grow.
        while len(self.unclaimed) >= _MAX_WARM:
            os.close(self.unclaimed.pop(next(iter(self.unclaimed)))[0].report)
        self.unclaimed[warm.pid] = (warm, report, status, usage)

    def _settle(self, run: _Run) -> bytes:
        """Called once the child is gone: its report pipe holds the failure before exec, or
        nothing (it exec'd); a warm child's starts with `_HANDED`. The frame telling the
        client how the start went: `failed`, or `started` (sent with `exited`, in one
        write)."""
        if run.report is None:
            return b""
        try:
            failure = run.reported if run.reported is not None else os.read(run.report, 512)
        finally:
            os.close(run.report)
            run.report = None
        failure = failure.removeprefix(_HANDED)
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
                self._on_warm_exit(self.warm[pid], status, usage)
            run = self.runs.pop(pid, None)
            if run is not None:  # else a warm child, or an orphan
                self._finish(run, status, usage)

    def _finish(self, run: _Run, status: int, usage: Any) -> None:
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

    def _on_run_message(self, run: _Run) -> None:
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
        for warm in self.warm.values():
            warm.discard()
        self.warm.clear()
        for warm, *_ in self.unclaimed.values():
            os.close(warm.report)
        self.unclaimed.clear()
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
        self._kill_tree(self._children(self.my_pid))
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
        preparing = bool(self.wanted) and not self.runs
        readable, writable, _ = select.select(watched, sending, [], 0 if preparing else None)
        if not readable and not writable and preparing:
            # A run was just answered: the host, woken by it, often waits for this CPU
            # (placed where its waker runs); let it go first, the fork can wait that long.
            os.sched_yield()
            self._prepare(*self.wanted.pop(0))
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
        self._prepare_pooled(request["cgroups"], _Like(request))
        for fd in fds:  # none are expected
            os.close(fd)

    def _prepare_pooled(self, groups: list[list[str]], like: _Like) -> None:
        """Warm children for pooled cgroups (from a prepare frame, or the `prepare` field of a
        spawn request or claim), prepared like `like` only when the last such hint named a
        like one (see the module's docstring)."""
        if not groups:
            return
        if like.ahead != self.last_prepare:  # another policy than the last
            self.last_prepare = like.ahead
            like = _GENERIC
        for group in groups:
            self._want(tuple(group), like)


def main() -> None:
    control = socket.socket(fileno=int(os.environ.pop(framing.CONTROL_FD_ENV)))
    # No PR_SET_PDEATHSIG here: it follows the host *thread* that started us, not the host
    # process. The host dying closes the control socket, and that ends us (and our runs).
    control.set_inheritable(False)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
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
