"""Reading the host's process table (Linux `/proc`): used to prove nothing outlived a run."""

from __future__ import annotations

import pathlib


def alive_with_marker(marker: str) -> list[int]:
    """Pids of live (non-zombie) host processes whose command line contains `marker`."""
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
