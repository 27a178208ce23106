"""The workspace on its way to a node and its changes on the way back, as tar archives.

Both directions go through the same reader (`extract`), which trusts no archive: a node
may be handed a caller's workspace with anything in it, and a caller takes back what a
command wrote, which is whatever the command chose to write. The whole archive is refused
(`TransferRefused`) when it is bigger than the cap (counted from the headers before a byte
is written: no tar bomb), holds too many members, or holds a member no honest packer
makes: an absolute name or one with `..`, a hard link, a device, a FIFO, a sparse or other
special member. A symbolic link whose target leaves the workspace is not written (a
warning says so): a virtualenv's `python -> /usr/bin/python3` is ordinary, and following it
would be the danger. Set-user-ID, set-group-ID and sticky bits are dropped. Writes never
follow a link: every directory on the way is opened with O_NOFOLLOW from the root, files
are written under a temporary name and renamed over (a hard link to a file outside the
workspace is replaced, never written through). Paths under `protected` (the policy's
protected paths, relative to the workspace) are never written or removed; each one asked
for is a warning.

Changes are found by comparing what a walk of the workspace sees (type, size, mode, mtime
and ctime, link target) before and after the run: ctime cannot be set back by the command,
so a file rewritten with the same size and a forged mtime is still seen.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
from returns.result import Failure, Result, Success

MAX_MEMBERS = 200_000
# The part of a name `extract` writes its temporary files under (never a member's name).
_TEMPORARY = ".mechasandbox-transfer-"
_ACCEPTED = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE})


@attrs.frozen(kw_only=True)
class TransferRefused:
    """Why an archive (or a workspace to pack) was refused, as a person reads it."""

    reason: str


@attrs.frozen(kw_only=True)
class Changes:
    """What a run changed in its workspace: the new and modified entries as a tar archive,
    and the paths it removed (relative, `/`-separated)."""

    archive: bytes
    removed: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@attrs.frozen
class _Seen:
    kind: int  # stat.S_IFMT
    size: int
    mode: int
    mtime_ns: int
    ctime_ns: int
    target: str | None


Snapshot = dict[str, _Seen]


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every entry under `root`, parents first, links not
    followed."""
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(root, relative) if relative else root) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = f"{relative}/{entry.name}" if relative else entry.name
                info = entry.stat(follow_symlinks=False)
                yield path, info
                if stat.S_ISDIR(info.st_mode):
                    pending.append(path)


def snapshot(root: str) -> Snapshot:
    """What `pack_changes` compares with after the run."""
    seen: Snapshot = {}
    for path, info in _walk(root):
        target = os.readlink(os.path.join(root, path)) if stat.S_ISLNK(info.st_mode) else None
        seen[path] = _Seen(
            kind=stat.S_IFMT(info.st_mode),
            size=info.st_size,
            mode=stat.S_IMODE(info.st_mode),
            mtime_ns=info.st_mtime_ns,
            ctime_ns=info.st_ctime_ns,
            target=target,
        )
    return seen


def _packable(path: str, info: os.stat_result) -> str | None:
    """Why the entry is left out of an archive, if it is (a socket, a FIFO, a device)."""
    if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode) or stat.S_ISLNK(info.st_mode):
        return None
    return f"not carried: {path} is neither a file, a directory nor a symbolic link"


class _Capped(io.BytesIO):
    """A buffer that refuses to grow past `cap` bytes."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def write(self, data: Any, /) -> int:
        if self.tell() + len(data) > self.cap:
            raise _TooBigError
        return super().write(data)


class _TooBigError(Exception):
    pass


def _pack(
    root: str, paths: Sequence[str], cap: int
) -> Result[tuple[bytes, tuple[str, ...]], TransferRefused]:
    sink = _Capped(cap)
    left_out: list[str] = []
    try:
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for path in paths:
                full = os.path.join(root, path)
                info = os.lstat(full)
                if (problem := _packable(path, info)) is not None:
                    left_out.append(problem)
                    continue
                member = archive.gettarinfo(full, arcname=path)
                member.uid = member.gid = 0
                member.uname = member.gname = ""
                if member.isreg():
                    with open(full, "rb") as stream:
                        archive.addfile(member, stream)
                else:
                    archive.addfile(member)
    except _TooBigError:
        return Failure(TransferRefused(reason=f"more than {cap} bytes to carry"))
    except OSError as error:
        return Failure(TransferRefused(reason=f"cannot read {error.filename}: {error.strerror}"))
    return Success((sink.getvalue(), tuple(left_out)))


def pack_workspace(
    root: str, cap: int, leave_out: Sequence[str] = ()
) -> Result[tuple[bytes, tuple[str, ...]], TransferRefused]:
    """The workspace at `root` as a tar archive of at most `cap` bytes, and a warning for
    each entry left out (special files). `leave_out`: relative paths not sent, with what
    is under them (the policy's denied reads inside the workspace)."""
    paths = [
        path for path, _ in _walk(root) if not any(_under(path, skipped) for skipped in leave_out)
    ]
    return _pack(root, paths, cap)


def pack_changes(root: str, before: Snapshot, cap: int) -> Result[Changes, TransferRefused]:
    """What changed under `root` since `before`, as `Changes` of at most `cap` bytes."""
    after = snapshot(root)
    changed = [path for path, seen in after.items() if before.get(path) != seen]
    removed = tuple(path for path in before if path not in after)
    # Below a removed directory, only the directory itself needs saying.
    removed = tuple(p for p in removed if not any(_under(p, q) and p != q for q in removed))
    return _pack(root, changed, cap).map(
        lambda packed: Changes(archive=packed[0], removed=removed, warnings=packed[1])
    )


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _name_problem(name: str) -> str | None:
    parts = name.split("/")
    if not name or "\0" in name or name.startswith("/") or "\\" in name:
        return f"member {name!r}: not a relative path"
    if any(part in {"", ".", ".."} for part in parts):
        return f"member {name!r}: '..', '.' or an empty part in its path"
    if any(part.startswith(_TEMPORARY) for part in parts):
        return f"member {name!r}: a name this reader keeps for itself"
    return None


def _link_leaves(name: str, target: str) -> bool:
    """Whether the link `name -> target` points outside the workspace (or nowhere)."""
    if not target or target.startswith("/") or "\0" in target:
        return True
    depth = len(name.split("/")) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in {"", "."}:
            depth += 1
    return False


def _check(archive: tarfile.TarFile, cap: int) -> Result[list[tarfile.TarInfo], TransferRefused]:
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in archive:
        if len(members) >= MAX_MEMBERS:
            return Failure(TransferRefused(reason=f"more than {MAX_MEMBERS} members"))
        name = member.name.rstrip("/") if member.isdir() else member.name
        if (problem := _name_problem(name)) is not None:
            return Failure(TransferRefused(reason=problem))
        if member.type not in _ACCEPTED or member.issparse():
            kind = "a hard link" if member.islnk() else f"type {member.type!r}"
            return Failure(TransferRefused(reason=f"member {name!r}: {kind} is not carried"))
        total += member.size
        if total > cap:
            return Failure(TransferRefused(reason=f"its members hold more than {cap} bytes"))
        member.name = name
        members.append(member)
    return Success(members)


def extract(
    data: bytes | None, root: str, cap: int, protected: Sequence[str] = ()
) -> Result[tuple[str, ...], TransferRefused]:
    """Write the archive `data` under the directory `root` (see the module's docstring);
    the warnings of what was not written. `data` None: nothing to write."""
    if data is None:
        return Success(())
    if len(data) > cap + 64 * 1024:  # headers and padding beyond the members' bytes
        return Failure(TransferRefused(reason=f"the archive is bigger than {cap} bytes"))
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")  # noqa: SIM115
        with archive:
            checked = _check(archive, cap)
            if isinstance(checked, Failure):
                return checked
            return _write_all(archive, checked.unwrap(), root, protected)
    except (tarfile.TarError, EOFError) as error:
        return Failure(TransferRefused(reason=f"not a readable tar archive: {error}"))


def _write_all(
    archive: tarfile.TarFile,
    members: list[tarfile.TarInfo],
    root: str,
    protected: Sequence[str],
) -> Result[tuple[str, ...], TransferRefused]:
    warnings: list[str] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for member in members:
            if any(_under(member.name, path) for path in protected):
                warnings.append(f"not written back: {member.name} (a protected path)")
                continue
            if member.issym() and _link_leaves(member.name, member.linkname):
                warnings.append(
                    f"not written: {member.name} -> {member.linkname} (a link out of the workspace)"
                )
                continue
            try:
                _write(archive, member, root_fd)
            except OSError as error:
                return Failure(
                    TransferRefused(reason=f"cannot write {member.name}: {error.strerror}")
                )
    finally:
        os.close(root_fd)
    return Success(tuple(warnings))


@contextlib.contextmanager
def _parent(root_fd: int, name: str, *, create: bool) -> Iterator[tuple[int, str]]:
    """The directory holding `name` (opened from `root_fd`, no link followed) and its last
    part. ENOTDIR/ELOOP when a part on the way is not a directory (a link among them)."""
    *directories, last = name.split("/")
    fd = os.dup(root_fd)
    try:
        for part in directories:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            following = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = following
        yield fd, last
    finally:
        os.close(fd)


def _remove_at(fd: int, name: str) -> None:
    """Remove `name` in the directory `fd`, whatever it is (a directory with its tree)."""
    try:
        info = os.lstat(name, dir_fd=fd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        import shutil

        shutil.rmtree(name, dir_fd=fd)
    else:
        os.unlink(name, dir_fd=fd)


def _write(archive: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int) -> None:
    mode = stat.S_IMODE(member.mode) & 0o777  # never set-user-ID, set-group-ID or sticky
    with _parent(root_fd, member.name, create=True) as (fd, last):
        if member.isdir():
            try:
                info = os.lstat(last, dir_fd=fd)
            except FileNotFoundError:
                info = None
            if info is not None and not stat.S_ISDIR(info.st_mode):
                os.unlink(last, dir_fd=fd)
                info = None
            if info is None:
                os.mkdir(last, mode | 0o700, dir_fd=fd)
            directory = os.open(last, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            try:
                os.fchmod(directory, mode | 0o700)
            finally:
                os.close(directory)
            return
        temporary = f"{_TEMPORARY}{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=fd)
        if member.issym():
            os.symlink(member.linkname, temporary, dir_fd=fd)
        else:
            _write_file(archive, member, fd, temporary, mode)
        try:
            info = os.lstat(last, dir_fd=fd)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            _remove_at(fd, last)
        os.rename(temporary, last, src_dir_fd=fd, dst_dir_fd=fd)


def _write_file(
    archive: tarfile.TarFile, member: tarfile.TarInfo, fd: int, name: str, mode: int
) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(name, flags, 0o600, dir_fd=fd)
    try:
        source = archive.extractfile(member)
        if source is not None:
            with source:
                while chunk := source.read(1 << 20):
                    os.write(out, chunk)
        os.fchmod(out, mode)
        os.utime(out, ns=(int(member.mtime * 1e9),) * 2)
    finally:
        os.close(out)


def remove(
    root: str, paths: Sequence[str], protected: Sequence[str] = ()
) -> Result[tuple[str, ...], TransferRefused]:
    """Remove the relative `paths` under `root` (a run removed them on its node), never
    through a link, never a protected path; the warnings of what was kept."""
    warnings: list[str] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for path in paths:
            if (problem := _name_problem(path)) is not None:
                return Failure(TransferRefused(reason=f"removal of {problem}"))
            if any(_under(path, top) or _under(top, path) for top in protected):
                warnings.append(f"not removed: {path} (a protected path, or holds one)")
                continue
            try:
                with _parent(root_fd, path, create=False) as (fd, last):
                    _remove_at(fd, last)
            except FileNotFoundError:
                continue
            except OSError as error:
                return Failure(TransferRefused(reason=f"cannot remove {path}: {error.strerror}"))
    finally:
        os.close(root_fd)
    return Success(tuple(warnings))
