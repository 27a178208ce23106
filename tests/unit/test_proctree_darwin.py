"""The macOS process-tree walker: pure parsers on sample data (any OS), and on macOS a
cross-check of the sysctl reader against `ps`."""

from __future__ import annotations

import os
import struct
import sys

import pytest

from mechasandbox.runner import proctree_darwin as pt
from mechasandbox.runner.proctree_darwin import Proc

PS_SAMPLE = """\
    1     0     1
  412     1   412
 7000   412  7000
 7001  7000  7000
 7002  7001  7000
 7003  7001  7003
 7004     1  7000
 7005     1  7005
garbage line
 7006  7005
"""


def kinfo(procs: list[Proc]) -> bytes:
    buffer = bytearray()
    for proc in procs:
        record = bytearray(pt.KINFO_PROC_SIZE)
        struct.pack_into("=i", record, pt.OFFSET_PID, proc.pid)
        struct.pack_into("=ii", record, pt.OFFSET_PPID, proc.ppid, proc.pgid)
        buffer += record
    return bytes(buffer)


def test_ps_output_is_parsed() -> None:
    table = pt.parse_ps(PS_SAMPLE)
    assert len(table) == 8
    assert table[3] == Proc(7001, 7000, 7000)


def test_kinfo_records_are_parsed() -> None:
    procs = list(pt.parse_ps(PS_SAMPLE))
    raw = kinfo(procs)
    assert pt.parse_kinfo_procs(raw) == tuple(procs)
    # a partial trailing record (the table grew) and pid 0 (the kernel) are ignored
    assert pt.parse_kinfo_procs(kinfo([Proc(0, 0, 0), *procs]) + b"\0" * 100) == tuple(procs)


def test_children_follow_parents_and_the_process_group() -> None:
    table = pt.parse_ps(PS_SAMPLE)
    # 7004 was orphaned to launchd but is still in the run's group; 7003 left the group
    # (setsid) but its parent is known; 7005 left the group and was orphaned: it escapes.
    assert sorted(pt.children(table, 7000)) == [7001, 7002, 7004]
    assert pt.children(table, 7001) == [7002, 7003]
    assert 7005 not in pt.children(table, 7000)


def test_a_dead_roots_group_is_still_found() -> None:
    """After the run's root exits, its orphans in the run's group are still children."""
    table = [Proc(8001, 1, 8000), Proc(8002, 8001, 8000), Proc(8003, 1, 8003)]
    assert pt.children(table, 8000) == [8001, 8002]


@pytest.mark.skipif(sys.platform != "darwin", reason="reads the macOS process table")
def test_sysctl_table_agrees_with_ps() -> None:
    from_sysctl = pt._sysctl_table()
    assert from_sysctl, "sysctl KERN_PROC_ALL gave nothing"
    mine = next(p for p in from_sysctl if p.pid == os.getpid())
    assert mine == Proc(os.getpid(), os.getppid(), os.getpgrp())
    from_ps = {p.pid: p for p in pt._ps_table()}
    common = [p for p in from_sysctl if p.pid in from_ps]
    assert len(common) > 10
    assert all(from_ps[p.pid] == p for p in common if p.pid == os.getpid())
    agreeing = sum(from_ps[p.pid] == p for p in common)
    assert agreeing >= 0.9 * len(common)  # processes may come and go between the reads


def test_ps_marker_lines_are_parsed() -> None:
    from mechasandbox.runner.proctable import parse_ps_marker

    text = (
        "  501 S    sh -c sleep 300 mark-1\n"
        "  502 Z    (sh)\n"
        "  503 Z+   sh mark-1\n"
        "  504 Ss   /bin/zsh -l\n"
        "  505 R+   sleep 301 mark-1 extra\n"
    )
    assert parse_ps_marker(text, "mark-1") == [501, 505]
