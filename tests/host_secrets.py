"""A pytest plugin of this suite: a test that failed while the host replaced one of the
/etc secrets every sandbox masks is run again.

A sandbox run whose masked secret is replaced on the host is stopped, by design (see
tests/backends/test_bubblewrap_host_etc.py): `useradd`, `groupadd` or `passwd`, run by
anyone on the machine, rewrite /etc/shadow and /etc/gshadow that way. A test that failed
meanwhile has shown no fault of ours, and the suite must not depend on a quiet host. Other
/etc files (/etc/group, /etc/hosts) stop no run and are not looked at.
"""

from __future__ import annotations

import glob
import os
import sys

import pytest
from _pytest.runner import runtestprotocol

from mechasandbox.backends.linux.roots import ETC_SECRETS

PATTERNS: tuple[str, ...] = ETC_SECRETS
RERUNS = 2  # at most; only the last attempt is reported

Identities = frozenset[tuple[str, int, int]]
_RERUN = pytest.StashKey[list[str]]()


def identities() -> Identities:
    """(path, device, inode) of each existing path matching PATTERNS."""
    found: set[tuple[str, int, int]] = set()
    for pattern in PATTERNS:
        for path in glob.glob(pattern) if glob.has_magic(pattern) else [pattern]:
            try:
                info = os.lstat(path)
            except OSError:
                continue
            found.add((path, info.st_dev, info.st_ino))
    return frozenset(found)


def replaced(before: Identities, after: Identities) -> list[str]:
    """The paths replaced, made or removed between the two looks."""
    return sorted({path for path, _, _ in before ^ after})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """pytest's own protocol (set up, call, tear down, then report), repeated for a failed
    test during which a masked secret was replaced."""
    if not sys.platform.startswith("linux"):
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for attempt in range(RERUNS + 1):
        before = identities()
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        changed = replaced(before, identities())
        if attempt == RERUNS or not changed or not any(report.failed for report in reports):
            break
        note = f"{item.nodeid}: {', '.join(changed)} replaced on the host meanwhile"
        item.config.stash.setdefault(_RERUN, []).append(note)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    rerun = config.stash.get(_RERUN, [])
    if rerun:
        terminalreporter.section("run again: a masked /etc secret was replaced during the test")
        for line in rerun:
            terminalreporter.write_line(line)
