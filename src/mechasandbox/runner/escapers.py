"""Commands that try to outlive their run, and a way to prove they really ran.

A teardown test that only checks "no marked process is left" passes vacuously if the
escapers never started (a missing `setsid`, a shell that execs straight into `sleep`), so
`PeakCounter` samples the host's process table during the run as well.
"""

from __future__ import annotations

import shutil
import threading

from mechasandbox.runner.proctable import alive_with_marker

# `setsid` is a util-linux program; macOS has none, so call setsid(2) through perl there.
SETSID = "setsid" if shutil.which("setsid") else "perl -MPOSIX -e 'POSIX::setsid(); exec @ARGV'"
ESCAPERS = 3


def escaper_script(marker: str, *, then: str = "echo started; wait") -> str:
    """A shell script starting ESCAPERS processes whose command line shows `marker`: a
    background child, one that left the session (setsid), and a double-forked daemon.

    Each is a `sh` (with `; :` so it cannot exec into `sleep`) whose $0 is the marker, built
    at run time so that the script's own command line does not contain it.
    """
    first, second = marker[:-2], marker[-2:]
    return (
        f'M="{first}""{second}"; '
        "sh -c 'sleep 300; :' \"$M\" & "
        f"{SETSID} sh -c 'sleep 301; :' \"$M\" & "
        f"({SETSID} sh -c \"sh -c 'sleep 302; :' $M &\" &); "
        f"{then}"
    )


class PeakCounter:
    """Samples, in a thread, the most marked host processes alive at once.

    Compare `peak` with `>= ESCAPERS` ("every escaper was running"), never `==`: a sample
    may catch a process for a moment carrying the marker besides the escapers (the double
    fork's middle shell before it exits, a shell forked for `sleep` before its exec). That
    the tree was killed is shown by `alive_with_marker` finding none after the run.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            self.peak = max(self.peak, len(alive_with_marker(self.marker)))

    def __enter__(self) -> PeakCounter:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()
