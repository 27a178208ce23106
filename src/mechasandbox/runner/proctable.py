"""Reading the host's process table: used to prove nothing outlived a run.

Linux reads `/proc`; macOS (no `/proc`) asks `ps`.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

_IS_LINUX = sys.platform.startswith("linux")


def _alive_linux(marker: str) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def parse_ps_marker(text: str, marker: str) -> list[int]:
    """Pids in `ps -Ao pid=,stat=,command=` output whose command holds `marker`, zombies
    excluded."""
    found = []
    for line in text.splitlines():
        fields = line.split(None, 2)
        live = len(fields) == 3 and fields[0].isdigit() and not fields[1].startswith("Z")
        if live and marker in fields[2]:
            found.append(int(fields[0]))
    return found


def _alive_ps(marker: str) -> list[int]:
    completed = subprocess.run(
        ["/bin/ps", "-Ao", "pid=,stat=,command="], capture_output=True, timeout=10, check=True
    )
    return parse_ps_marker(completed.stdout.decode(errors="replace"), marker)


def alive_with_marker(marker: str) -> list[int]:
    """Pids of live (non-zombie) host processes whose command line contains `marker`."""
    if _IS_LINUX:
        return _alive_linux(marker)
    return _alive_ps(marker)
