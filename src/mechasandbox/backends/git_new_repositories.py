"""Repositories a command made during a run, disarmed after it.

A repository made in the workspace during a run (`git init`, `git clone`, a copy of
`.git`) cannot be protected beforehand: nobody knows where it will be. Its hooks and
configuration are the command's, and the host's git runs them: in it, and from the
workspace's own repository too (`git status` there runs `git status` in every checked-out
submodule, and `git add` of a nested repository makes it one). So after each run the
workspace is walked again (see `git_walk`: only directories that changed are listed) and
every repository that was not protected during the run is looked at: one with anything
git would run of its own (a hook that is not a `.sample`, a `core.fsmonitor`, filter or
other command setting, an include, a `core.hooksPath`, a `commondir`) is disarmed: its
`.git` (a bare repository: the directory itself) is renamed to `<name>-disarmed-<n>`, so
that git no longer finds it, and the run's result says so. A plain `git init` or `git
clone` has none of these and is left as it is.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection

from mechasandbox.backends.git_config import ParsedConfigs
from mechasandbox.backends.git_facts import GitFacts
from mechasandbox.backends.git_indirections import (
    PATH_KEYS,
    Repository,
    gitdir_protected,
    repository_at,
    runs_command,
)
from mechasandbox.backends.git_walk import MAX_WALK_DIRECTORIES
from mechasandbox.domain.policy import Policy

SUFFIX = "-disarmed"


def _inside(path: str, workspace: str) -> bool:
    return os.path.normpath(path).startswith(workspace.rstrip("/") + "/")


def _below_any(gitdir: str, exposed: Collection[str]) -> bool:
    """Whether `gitdir` is a path of `exposed` or below one."""
    gitdir = os.path.normpath(gitdir)
    return any(gitdir == path or _inside(gitdir, path) for path in map(os.path.normpath, exposed))


def armed(repository: Repository, home: str, parsed: ParsedConfigs | None = None) -> str | None:
    """What git would run of this repository's own (None: nothing)."""
    for directory in dict.fromkeys((repository.gitdir, repository.commondir)):
        with contextlib.suppress(OSError):
            hooks = [
                n for n in os.listdir(os.path.join(directory, "hooks")) if not n.endswith(".sample")
            ]
            if hooks:
                return f"hook {hooks[0]}"
    if os.path.lexists(os.path.join(repository.gitdir, "commondir")):
        return "a commondir"
    files = repository.config_files(home, parsed)
    if files.includes:
        return "an include"
    for entry in files.entries:
        if entry.value is not None and (
            runs_command(entry)
            or ((entry.section, entry.name) in PATH_KEYS and entry.subsection is None)
        ):
            return entry.key
    return None


def _rename_aside(path: str) -> str | None:
    """`path` renamed beside itself (never over anything); the new name, or None."""
    parent, name = os.path.split(path)
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for number in range(1, 100):
            target = f"{name}{SUFFIX}-{number}"
            try:
                os.stat(target, dir_fd=fd, follow_symlinks=False)
                continue
            except FileNotFoundError:
                pass
            except OSError:
                return None
            try:
                os.rename(name, target, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError:
                return None
            return os.path.join(parent, target)
        return None
    finally:
        os.close(fd)


def _changed_since(path: str, since_ns: int) -> bool:
    try:
        return os.lstat(path).st_ctime_ns >= since_ns
    except OSError:
        return False


def disarm_new_repositories(
    workspace: str,
    policy: Policy,
    *,
    since_ns: int,
    home: str | None = None,
    facts: GitFacts | None = None,
    skip: Collection[str] = (),
    exposed: Collection[str] = (),
) -> tuple[str, ...]:
    """Disarm the armed repositories the run (started at `since_ns`, file system time)
    made or changed and did not protect; the warnings that say so. Only where the policy
    protects `.git/config` (see `with_git_indirections`). A repository left unprotected
    for being beyond the search's bounds but untouched by the run stays as it was.
    `facts`: what the search before the run read (None: everything read now); `skip`:
    directories not to look into (see `NestedWalker.walk`); `exposed`: protected host paths
    whose cover came off during the run (a guard lost: the host replaced the path, and the
    command could write the new one: a placeholder such as `.vscode`), so a repository
    below one is the command's, as if nothing had protected it."""
    if ".git/config" not in policy.filesystem.protected:
        return ()
    home = home if home is not None else os.environ.get("HOME", "")
    git = facts if facts is not None else GitFacts()
    walk = git.walker.walk(workspace, skip=skip)
    found: list[tuple[str, Repository]] = []
    for top in walk.worktrees:
        repository = repository_at(top)
        if repository is not None:
            found.append((os.path.join(top, ".git"), repository))
    found += [(path, Repository(gitdir=path, commondir=path, worktree=path)) for path in walk.bare]
    warnings: list[str] = []
    if walk.truncated:
        warnings.append(
            f"git: the workspace has more than {MAX_WALK_DIRECTORIES} directories; "
            "repositories the command made beyond them were not checked: do not run git in "
            "this workspace before looking for `.git` directories you did not make"
        )
    if walk.unreadable:
        warnings.append(
            "git: directories the search could not read (their mode) were not checked for "
            f"repositories the command made: {', '.join(walk.unreadable[:5])}"
        )
    for aside, repository in found:
        gitdir = repository.gitdir
        if not _inside(gitdir, workspace):
            continue  # another's: as it was
        if gitdir_protected(policy, workspace, gitdir) and not _below_any(gitdir, exposed):
            continue  # protected during the run: as it was
        if not (_changed_since(aside, since_ns) or _changed_since(gitdir, since_ns)):
            continue
        reason = armed(repository, home, git.configs)
        if reason is None:
            continue
        renamed = _rename_aside(aside)
        if renamed is None:
            warnings.append(
                f"git: the command made a repository at {aside} that would run its own code "
                f"on the host ({reason}), and it could not be renamed: do not run git there"
            )
        else:
            warnings.append(
                f"git: the command made a repository at {aside} that would run its own code "
                f"on the host ({reason}); renamed to {renamed}, inspect it before using it"
            )
    return tuple(warnings)
