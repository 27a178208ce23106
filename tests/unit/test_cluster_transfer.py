"""The workspace archives of the `ray` backend: hostile archives against the real reader,
on real directories (no cluster needed)."""

from __future__ import annotations

import io
import os
import pathlib
import stat
import tarfile

import pytest
from returns.result import Failure, Success

from mechasandbox.backends.cluster import transfer

CAP = 1 << 20


def archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **more: object
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    for key, value in more.items():
        setattr(info, key, value)
    return info, (data if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    ("name", "kind", "more"),
    [
        ("/etc/cron.d/x", tarfile.REGTYPE, {}),
        ("../outside", tarfile.REGTYPE, {}),
        ("a/../../outside", tarfile.REGTYPE, {}),
        ("hard", tarfile.LNKTYPE, {"linkname": "/etc/shadow"}),
        ("null", tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}),
        ("disk", tarfile.BLKTYPE, {"devmajor": 8, "devminor": 0}),
        ("fifo", tarfile.FIFOTYPE, {}),
    ],
)
def test_an_archive_no_honest_packer_makes_is_refused_whole(
    tmp_path: pathlib.Path, name: str, kind: bytes, more: dict[str, object]
) -> None:
    data = archive(member("first", data=b"1"), member(name, kind, b"", **more))
    result = transfer.extract(data, str(tmp_path), CAP)
    assert isinstance(result, Failure), result
    assert list(tmp_path.iterdir()) == []  # checked whole before anything is written


def test_a_tar_bomb_is_refused_from_its_headers(tmp_path: pathlib.Path) -> None:
    """A header claiming a terabyte: refused from the header, nothing read or written."""
    info, _ = member("bomb")
    info.size = 1 << 40
    buffer = io.BytesIO()
    buffer.write(info.tobuf(tarfile.PAX_FORMAT))
    buffer.write(b"\0" * 1024)
    result = transfer.extract(buffer.getvalue(), str(tmp_path), CAP)
    assert isinstance(result, Failure), result
    assert "more than" in result.failure().reason
    assert list(tmp_path.iterdir()) == []


def test_members_beyond_the_cap_together_are_refused(tmp_path: pathlib.Path) -> None:
    data = archive(*(member(f"f{i}", data=b"x" * (CAP // 4)) for i in range(5)))
    result = transfer.extract(data, str(tmp_path), CAP + CAP)
    assert isinstance(result, Success)
    refused = transfer.extract(data, str(tmp_path / "none"), CAP)
    assert isinstance(refused, Failure)


def test_too_many_members(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "MAX_MEMBERS", 10)
    data = archive(*(member(f"f{i}") for i in range(11)))
    assert isinstance(transfer.extract(data, str(tmp_path), CAP), Failure)


def test_links_out_are_not_written_links_in_are(tmp_path: pathlib.Path) -> None:
    data = archive(
        member("abs", tarfile.SYMTYPE, linkname="/etc/shadow"),
        member("d/up", tarfile.SYMTYPE, linkname="../../etc"),
        member("d/in", tarfile.SYMTYPE, linkname="../target"),
        member("target", data=b"t"),
    )
    warnings = transfer.extract(data, str(tmp_path), CAP).unwrap()
    assert not os.path.lexists(tmp_path / "abs")
    assert not os.path.lexists(tmp_path / "d" / "up")
    assert os.readlink(tmp_path / "d" / "in") == "../target"
    assert len(warnings) == 2


def test_set_id_and_sticky_bits_are_dropped(tmp_path: pathlib.Path) -> None:
    data = archive(
        member("suid", data=b"#!", mode=0o6755),
        member("dir", tarfile.DIRTYPE, mode=0o1777),
    )
    transfer.extract(data, str(tmp_path), CAP).unwrap()
    assert stat.S_IMODE((tmp_path / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o777


def test_never_written_through_a_link_on_the_way(tmp_path: pathlib.Path) -> None:
    """A link already in the workspace, or one the archive itself made first: a member
    below it is refused, nothing lands outside."""
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    (workspace / "there").symlink_to(outside)
    refused = transfer.extract(archive(member("there/x", data=b"x")), str(workspace), CAP)
    assert isinstance(refused, Failure), refused
    made = archive(member("sub", tarfile.DIRTYPE), member("l", tarfile.SYMTYPE, linkname="sub"))
    transfer.extract(made, str(workspace), CAP).unwrap()
    through = transfer.extract(archive(member("l/x", data=b"x")), str(workspace), CAP)
    assert isinstance(through, Failure), through
    assert list(outside.iterdir()) == []
    assert list((workspace / "sub").iterdir()) == []


def test_a_hard_link_in_the_workspace_is_replaced_not_written_through(
    tmp_path: pathlib.Path,
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "precious").write_text("keep\n")
    os.link(tmp_path / "precious", workspace / "h")
    transfer.extract(archive(member("h", data=b"new\n")), str(workspace), CAP).unwrap()
    assert (tmp_path / "precious").read_text() == "keep\n"
    assert (workspace / "h").read_text() == "new\n"


def test_protected_paths_are_never_written_or_removed(tmp_path: pathlib.Path) -> None:
    (tmp_path / ".git" / "hooks").mkdir(parents=True)
    (tmp_path / ".git" / "hooks" / "pre-commit").write_text("mine\n")
    protected = (".git/hooks", ".envrc")
    data = archive(
        member(".git/hooks/pre-commit", data=b"evil\n"),
        member(".envrc", data=b"evil\n"),
        member("fine", data=b"ok\n"),
    )
    warnings = transfer.extract(data, str(tmp_path), CAP, protected).unwrap()
    assert (tmp_path / ".git" / "hooks" / "pre-commit").read_text() == "mine\n"
    assert not (tmp_path / ".envrc").exists()
    assert (tmp_path / "fine").read_text() == "ok\n"
    assert len(warnings) == 2
    kept = transfer.remove(str(tmp_path), (".git", ".git/hooks/pre-commit"), protected).unwrap()
    assert (tmp_path / ".git" / "hooks" / "pre-commit").exists()
    assert len(kept) == 2


def test_removal_never_follows_a_link(tmp_path: pathlib.Path) -> None:
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    (outside / "x").write_text("keep\n")
    (workspace / "l").symlink_to(outside)
    result = transfer.remove(str(workspace), ("l/x",))
    assert isinstance(result, Failure), result
    assert (outside / "x").read_text() == "keep\n"
    transfer.remove(str(workspace), ("l",)).unwrap()  # the link itself goes
    assert not os.path.lexists(workspace / "l")
    assert (outside / "x").exists()
    assert isinstance(transfer.remove(str(workspace), ("../outside/x",)), Failure)


def test_a_round_trip_carries_what_changed(tmp_path: pathlib.Path) -> None:
    source, node = tmp_path / "source", tmp_path / "node"
    source.mkdir()
    node.mkdir()
    (source / "a").write_text("a\n")
    (source / "keep").write_text("same\n")
    (source / "d").mkdir()
    (source / "d" / "gone").write_text("x")
    packed, left_out = transfer.pack_workspace(str(source), CAP).unwrap()
    assert left_out == ()
    transfer.extract(packed, str(node), CAP).unwrap()
    before = transfer.snapshot(str(node))
    (node / "a").write_text("A\n")
    (node / "d" / "gone").unlink()
    (node / "new").write_text("n\n")
    os.mkfifo(node / "fifo")
    changes = transfer.pack_changes(str(node), before, CAP).unwrap()
    with tarfile.open(fileobj=io.BytesIO(changes.archive)) as carried:
        names = set(carried.getnames())
    assert names == {"a", "d", "new"}
    assert changes.removed == ("d/gone",)
    assert any("fifo" in w for w in changes.warnings)
    transfer.remove(str(source), changes.removed).unwrap()
    transfer.extract(changes.archive, str(source), CAP).unwrap()
    assert (source / "a").read_text() == "A\n"
    assert (source / "new").read_text() == "n\n"
    assert not (source / "d" / "gone").exists()
    assert (source / "keep").read_text() == "same\n"


def test_packing_stops_at_the_cap(tmp_path: pathlib.Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (CAP + 1))
    assert isinstance(transfer.pack_workspace(str(tmp_path), CAP), Failure)
