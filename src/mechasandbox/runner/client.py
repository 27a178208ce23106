"""The host side of the spawn helper: starts it lazily and hands it spawn requests."""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechasandbox.runner import framing, native

# The fields of a spawn request a warm child is prepared from (see `helper`), and those a
# child prepared like the request has no use for.
_PREPARED_LIKE = ("ahead", "rehearsals")
_APPLIED = frozenset((*_PREPARED_LIKE, "prepare"))
# Warm children kept per group of cgroups: without cgroups, a few prepared like different
# requests (a host that alternates between backends); in a pooled cgroup, the newest.
_OFFERS_UNGROUPED = 4
_OFFERS_GROUPED = 1
# Groups of cgroups whose offers are kept, the most recently offered: a pooled cgroup is
# retired (removed, its warm child with it) when its last run left memory charged, and a new
# one takes its place, so the groups ever seen grow with the runs; the live ones are the
# manager's pool (eight) and those of the runs under way. An offer dropped here is only a
# warm child less (the helper forks one), while each kept one holds a socket.
_OFFER_GROUPS = 16


class _Offer:
    """A warm child the helper offered: `runs` hands it a run (closing it lets the child
    go), `ahead` the JSON text of the ahead hooks it applied ("" for none: it takes any
    run), `hooks` the hook modules it has loaded; `native`: the exec shim, which takes any
    run that has a native form (see `native`)."""

    __slots__ = ("ahead", "hooks", "native", "pid", "runs")

    def __init__(
        self,
        pid: int,
        runs: socket.socket,
        ahead: str,
        hooks: frozenset[str],
        *,
        native: bool = False,
    ) -> None:
        self.pid = pid
        self.runs = runs
        self.ahead = ahead
        self.hooks = hooks
        self.native = native

    def takes(self, ahead: str, needed: set[str], native_form: bytes | None) -> bool:
        if self.native:
            return native_form is not None
        return self.ahead in (ahead, "") and needed <= self.hooks


class HelperUnavailable(Exception):
    """The spawn helper could not be started or stopped answering."""


class SpawnHelperClient:
    """Owns one helper process. Thread-safe; usable from any event loop.

    Closing the client (explicitly, at interpreter exit, or by the host dying) closes the
    control socket, and the helper then kills every run it still has.
    """

    def __init__(self, *, exec_shim: bool = True) -> None:
        """`exec_shim`: let the helper start warm children from the exec shim where it is
        built (see `native`); False keeps them Python processes forked by the helper."""
        self._exec_shim = exec_shim
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._owner = os.getpid()  # the process whose helper `_control` talks to
        self._used = False  # a run was submitted to the current helper
        # Warm children offered by the current helper, by the cgroup.procs files they
        # joined (() for none), oldest first.
        self._offers: dict[tuple[str, ...], list[_Offer]] = {}

    def prestart(self) -> None:
        """Start the helper now, without waiting for it: its start-up (tens of ms) then
        overlaps with what the host does before its first run. Failing here is not an
        error; the first run tries again and reports it."""
        with self._lock, contextlib.suppress(HelperUnavailable):
            if self._control is None:
                self._start()

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        package_root = str(Path(__file__).resolve().parents[2])
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": package_root,
            framing.CONTROL_FD_ENV: str(theirs.fileno()),
            native.SHIM_ENV: (native.shim_path() if self._exec_shim else None) or "off",
        }
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-s", "-S", str(Path(__file__).with_name("_helper_main.py"))],
                pass_fds=[theirs.fileno()],
                env={**env, "PYTHONPATH": package_root},
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the host's terminal is the host's to handle
            )
        except OSError as error:
            ours.close()
            raise HelperUnavailable(f"cannot start the spawn helper: {error}") from error
        finally:
            theirs.close()
        self._control = ours
        self._owner = os.getpid()
        atexit.register(self.close)
        return ours

    def submit(self, request: dict[str, Any], stdio: list[int]) -> socket.socket:
        """Send one spawn request; returns this run's socket (answers arrive there)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                if self._owner != os.getpid():
                    self._forget_inherited()
                self._used = True
                if self._hand_to_offer(request, theirs, stdio):
                    return ours
                for attempt in range(2):
                    control = self._control or self._start()
                    try:
                        framing.send(control, request, [theirs.fileno(), *stdio])
                        break
                    except OSError as error:
                        # The helper died (killed by someone): start a fresh one once.
                        self._discard()
                        if attempt:
                            raise HelperUnavailable(f"spawn helper failed: {error}") from error
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    def _hand_to_offer(self, request: dict[str, Any], run: socket.socket, stdio: list[int]) -> bool:
        """Send the run straight to a warm child prepared like it, if the helper offered
        one (one process wake-up less than through the helper), then the run's socket to
        the helper in a `claim`: True when done. The claim follows the run so that the
        child starts first; the run cannot end before the helper has it (see `helper`)."""
        control = self._control
        if control is None:
            return False
        self._collect_offers(control)
        group = self._offers.get(tuple(request["cgroup_procs"]))
        if not group:
            return False
        ahead = framing.encode_text(request["ahead"]) if request["ahead"] else ""
        needed = {spec for spec, _ in [*request["ahead"], *request["hooks"]]}
        native_form = native.encode(request) if any(o.native for o in group) else None
        usable = [offer for offer in group if offer.takes(ahead, needed, native_form)]
        if not usable:
            return False
        # The shim first, then one prepared like the run.
        offer = min(usable, key=lambda o: (not o.native, o.ahead != ahead))
        group.remove(offer)
        if not group:
            del self._offers[tuple(request["cgroup_procs"])]
        sent = request
        if offer.ahead:  # it applied the ahead hooks already: less to encode and decode
            sent = {name: value for name, value in request.items() if name not in _APPLIED}
        try:
            if offer.native and native_form is not None:
                framing.send_frame(offer.runs, native_form, stdio)
            else:
                framing.send(offer.runs, sent, stdio)
        except OSError:
            return False  # it died meanwhile (its cgroup was removed): the helper forks
        finally:
            offer.runs.close()
        claim: dict[str, Any] = {"op": "claim", "pid": offer.pid, "prepare": request["prepare"]}
        if request.get("on_host_loss"):  # the helper owns the run: it must know this too
            claim.update(on_host_loss=request["on_host_loss"], env=request["env"])
        if not offer.ahead:  # a generic child: what the run was like, for the next ones
            claim.update({name: request[name] for name in _PREPARED_LIKE})
        try:
            framing.send(control, claim, [run.fileno()])
        except OSError as error:
            self._discard()  # the child dies with the helper
            raise HelperUnavailable(f"spawn helper failed: {error}") from error
        return True

    def _collect_offers(self, control: socket.socket) -> None:
        """Take the offers the helper sent since the last run (it sends nothing else)."""
        while True:
            try:
                if not control.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    return  # the helper is gone: the next send says so
                frame, fds = framing.receive_frame(control)  # whole frames come at once
            except (BlockingIOError, InterruptedError):
                return
            except (framing.FrameError, OSError):
                return  # the helper died mid-frame: the next send says so
            try:
                offer = framing.decode(frame)
            except (framing.FrameError, ValueError):
                offer = {}
            if offer.get("event") != "offer" or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            runs = socket.socket(fileno=fds[0])
            hooks = frozenset(offer["hooks"])
            found = _Offer(
                offer["pid"], runs, offer["ahead"], hooks, native=bool(offer.get("native"))
            )
            self._keep(tuple(offer["key"]), found)

    def _keep(self, key: tuple[str, ...], offer: _Offer) -> None:
        if key not in self._offers:  # a new cgroup, most often in place of a retired one
            self._drop_gone()
        group = self._offers.pop(key, [])
        self._offers[key] = group  # the most recent group last: the oldest go first
        for older in [o for o in group if o.ahead == offer.ahead]:
            group.remove(older)
            older.runs.close()
        group.append(offer)
        while len(group) > (_OFFERS_GROUPED if key else _OFFERS_UNGROUPED):
            group.pop(0).runs.close()
        while len(self._offers) > _OFFER_GROUPS:
            for stale in self._offers.pop(next(iter(self._offers))):
                stale.runs.close()

    def _drop_gone(self) -> None:
        """Drop the offers no run can take: those whose child has exited (its socket hung
        up), and those of a cgroup removed since (a retired pooled cgroup: its child died
        with it, or, prepared as it was being removed, never got in and waits outside it;
        cgroup names are never reused, so no run will name it again). One poll over the
        kept sockets (a warm child never sends on it) and one stat per group."""
        poller = select.poll()
        doomed: list[tuple[tuple[str, ...], _Offer]] = []
        polled: dict[int, tuple[tuple[str, ...], _Offer]] = {}
        for key, group in self._offers.items():
            if key and not os.path.exists(key[0]):
                doomed += [(key, offer) for offer in group]
                continue
            for offer in group:
                polled[offer.runs.fileno()] = (key, offer)
                poller.register(offer.runs.fileno(), select.POLLIN)
        doomed += [polled[fd] for fd, _events in poller.poll(0)]
        for key, offer in doomed:
            group = self._offers[key]
            group.remove(offer)
            offer.runs.close()
            if not group:
                del self._offers[key]

    def _drop_offers(self) -> None:
        for group in self._offers.values():
            for offer in group:
                offer.runs.close()
        self._offers.clear()

    def prepare(
        self, groups: Sequence[tuple[str, ...]], like: dict[str, Any] | None = None
    ) -> None:
        """Ask the running helper for a warm child in each group of cgroups, prepared like
        the spawn request `like` (see `helper`). A hint: nothing happens without a helper of
        this process, and failures are ignored (the next run reports them)."""
        message: dict[str, Any] = {"op": "prepare", "cgroups": [list(g) for g in groups]}
        if like is not None:
            message.update({name: like[name] for name in _PREPARED_LIKE if name in like})
        with self._lock:
            if self._control is None or self._owner != os.getpid():
                return
            with contextlib.suppress(OSError):
                framing.send(self._control, message)

    def _forget_inherited(self) -> None:
        """In a child forked from the host: the helper is the parent's; start our own
        rather than interleave frames with the parent on one socket."""
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.close()  # our copy only: the parent's helper lives on
        self._control = None
        self._drop_offers()  # our copies too: the parent's offers stay the parent's
        self._process = None
        self._owner = os.getpid()
        self._used = False

    def _discard(self) -> None:
        self._drop_offers()
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.close()
        self._control = None
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        self._process = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def close(self) -> None:
        """Stop the helper; it kills every run it still has before it exits. A helper that
        never got a run has nothing to kill: it is not waited for (it exits on its own)."""
        with self._lock:
            if self._owner != os.getpid():
                self._forget_inherited()
                return
            if not self._used:
                self._drop_offers()
                if self._control is not None:
                    with contextlib.suppress(OSError):
                        self._control.close()
                self._control = None
                if self._process is not None:  # reaped in the background when it exits
                    threading.Thread(target=self._process.wait, daemon=True).start()
                self._process = None
                return
            self._discard()
            self._used = False
