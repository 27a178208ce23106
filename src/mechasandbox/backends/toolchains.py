"""Toolchains installed under the home directory (pyenv, nvm, rustup and cargo, uv, bun, deno,
go, volta, sdkman, asdf, mise, `~/.local/bin`), made readable for a run by the backends that
hide the home directory, so that `pytest` or `cargo` found on the user's PATH works there.

What `filesystem.toolchains = ["auto"]` (the default) adds to a run, found when it starts:
- the roots of the known toolchains that exist (at the default place, or where the host's
  own variable says: `RUSTUP_HOME`, `PYENV_ROOT`...), read-only;
- the root of the command itself when its name is found on the host's PATH in a directory
  of the home (`~/tools/bin/x`: `~/tools`; a symlink's target too): the user put it there;
- the credential files inside those roots, denied (`~/.cargo/credentials.toml`, the npmrc
  of each node nvm installed...), besides the policy's own `deny_read`;
- the variables that tell each tool where its root is (`RUSTUP_HOME`, `CARGO_HOME`...), so
  that it is found whatever the run's HOME (a private one: see the backends), unless the
  policy sets them itself.
Paths listed in `filesystem.toolchains` are roots too (read-only, their credentials
denied); `()` adds nothing. Only the host's PATH and variables are read, never the
policy's: a project file may set `PATH`, and must not choose what becomes readable.
"""

from __future__ import annotations

import functools
import glob
import os
import posixpath
from collections.abc import Iterable, Mapping

import attrs

from mechasandbox.backends.base import HostContext
from mechasandbox.domain.policy import TOOLCHAINS_AUTO, FilesystemPolicy, Policy


@attrs.frozen
class Toolchain:
    """A toolchain's root under the home, the variables naming places in it (a relative
    path of "" is the root itself; the first such is also read from the host), and its
    credential files (globs relative to the root)."""

    root: str
    variables: tuple[tuple[str, str], ...] = ()
    secrets: tuple[str, ...] = ()


# The npmrc of a node installation (`$PREFIX/etc/npmrc`) may hold registry tokens.
_NODE_NPMRC = "etc/npmrc"
TOOLCHAINS: tuple[Toolchain, ...] = (
    Toolchain("~/.pyenv", (("PYENV_ROOT", ""),)),
    Toolchain("~/.nvm", (("NVM_DIR", ""),), secrets=(f"versions/node/*/{_NODE_NPMRC}",)),
    Toolchain("~/.rustup", (("RUSTUP_HOME", ""),)),
    Toolchain("~/.cargo", (("CARGO_HOME", ""),), secrets=("credentials", "credentials.toml")),
    Toolchain(
        "~/.local/share/uv",
        (("UV_PYTHON_INSTALL_DIR", "python"), ("UV_TOOL_DIR", "tools")),
        secrets=("credentials",),
    ),
    Toolchain("~/.bun", (("BUN_INSTALL", ""),)),
    Toolchain("~/.deno", (("DENO_INSTALL", ""),)),
    Toolchain("~/go", (("GOPATH", ""),)),
    Toolchain("~/.go"),
    Toolchain("~/.volta", (("VOLTA_HOME", ""),), secrets=(f"tools/image/node/*/{_NODE_NPMRC}",)),
    Toolchain("~/.sdkman", (("SDKMAN_DIR", ""),)),
    Toolchain("~/.asdf", (("ASDF_DATA_DIR", ""),)),
    Toolchain("~/.local/share/mise", (("MISE_DATA_DIR", ""),)),
    Toolchain("~/.local/bin"),
)
KNOWN_ROOTS: frozenset[str] = frozenset(toolchain.root for toolchain in TOOLCHAINS)


@attrs.frozen(kw_only=True)
class FoundToolchains:
    """What the toolchains add to one run: absolute paths and variables."""

    roots: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()
    variables: tuple[tuple[str, str], ...] = ()

    def variables_under(self, policy: Policy) -> tuple[tuple[str, str], ...]:
        """The variables the policy does not give a value itself."""
        env = policy.environment
        given = {name for name, _ in env.set} | set(env.pass_through)
        return tuple((name, value) for name, value in self.variables if name not in given)

    def applied(self, policy: Policy) -> Policy:
        """`policy` with the roots readable, their credentials denied and the variables set
        (those the policy does not give a value itself)."""
        if not self.roots:
            return policy
        fs, env = policy.filesystem, policy.environment
        variables = self.variables_under(policy)
        return attrs.evolve(
            policy,
            filesystem=attrs.evolve(
                fs,
                readable=_once(fs.readable, self.roots),
                deny_read=_once(fs.deny_read, self.denied),
            ),
            environment=attrs.evolve(env, set=env.set + variables),
        )


def _once(first: Iterable[str], more: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*first, *more)))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _strictly_inside(path: str, root: str) -> bool:
    return path != root and _inside(path, root)


def _acceptable_root(path: str, home: str) -> bool:
    """A root is never `/`, the home itself or a directory holding the home."""
    return posixpath.isabs(path) and path != "/" and not _inside(home, path)


def command_root(path: str, home: str) -> str | None:
    """The root of a toolchain holding the executable `path`: the directory above its `bin`
    (`~/.local/share/pypoetry/venv` for `.../venv/bin/poetry`), else its directory; None
    unless strictly inside `home` (a tool in the home itself gives the home no reader)."""
    directory = posixpath.dirname(path)
    if posixpath.basename(directory) == "bin" and _strictly_inside(
        posixpath.dirname(directory), home
    ):
        return posixpath.dirname(directory)
    return directory if _strictly_inside(directory, home) else None


def known_root_of(path: str, host: HostContext) -> str | None:
    """The known toolchain root (as `~/...`) holding `path`, if one does."""
    for toolchain in TOOLCHAINS:
        if _inside(path, posixpath.normpath(host.expand(toolchain.root))):
            return toolchain.root
    return None


def _host_root(toolchain: Toolchain, env: Mapping[str, str], home: str) -> str:
    """Where the host has `toolchain`: its own variable's value when it is an absolute
    path (one path: `GOPATH` may list several, then the default is used), else the
    default place."""
    for name, relative in toolchain.variables:
        value = env.get(name, "")
        if not relative and posixpath.isabs(value) and ":" not in value:
            return posixpath.normpath(value)
    return posixpath.normpath(home + toolchain.root[1:])


def _under_any(path: str, roots: tuple[str, ...]) -> bool:
    """Whether `path` is one of `roots` (normalised, absolute) or inside one: one
    `startswith` for them all (every run asks this of each root it finds)."""
    return path in roots or path.startswith(tuple(root.rstrip("/") + "/" for root in roots))


def _secrets(root: str, patterns: Iterable[str]) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        joined = posixpath.join(root, pattern)
        found += sorted(glob.glob(joined)) if glob.has_magic(pattern) else [joined]
    return found


# Where, among the candidates, the roots of the command itself go (see `_Candidates`).
_COMMAND = ""


@attrs.frozen
class _Candidates:
    """What a policy and a host make candidates, in order (a root, and the known toolchain
    it is): what needs no file system, worked out once per policy and host (see
    `_candidates`); whether each exists is asked at every run."""

    home: str
    deny_read: tuple[str, ...]
    roots: tuple[tuple[str, Toolchain | None], ...]
    path: str  # the host's PATH, where the command's own root is looked for
    writable: tuple[str, ...]  # the policy's writable paths: the command's to fill


@functools.lru_cache(maxsize=32)
def _candidates(fs: FilesystemPolicy, host: HostContext) -> _Candidates:
    home = posixpath.normpath(host.home) if host.home else "/"
    env = dict(host.env)
    deny_read = tuple(posixpath.normpath(host.expand(entry)) for entry in fs.deny_read)
    roots: list[tuple[str, Toolchain | None]] = []
    for entry in fs.toolchains:
        if entry == TOOLCHAINS_AUTO:
            roots += [(_host_root(toolchain, env, home), toolchain) for toolchain in TOOLCHAINS]
            roots.append((_COMMAND, None))
        else:
            roots.append((posixpath.normpath(host.expand(entry)), _toolchain_named(entry, host)))
    allowed = tuple(
        (root, toolchain)
        for root, toolchain in roots
        if root == _COMMAND or (_acceptable_root(root, home) and not _under_any(root, deny_read))
    )
    writable = tuple(posixpath.normpath(host.expand(entry)) for entry in fs.writable)
    return _Candidates(
        home=home, deny_read=deny_read, roots=allowed, path=env.get("PATH", ""), writable=writable
    )


def find_toolchains(
    fs: FilesystemPolicy, argv0: str, host: HostContext, workspace: str | None = None
) -> FoundToolchains:
    """What `fs.toolchains` adds to a run of `argv0` on `host` (reads the file system).
    `workspace` (a real path) and the policy's writable paths are the command's to write:
    a command found there, or leading there, chooses no reader (a symlink planted in a
    directory of the host's PATH inside them, `.venv/bin/x -> ~/elsewhere/bin/x`, would
    otherwise make `~/elsewhere` readable at the next run)."""
    if not fs.toolchains:
        return FoundToolchains()
    candidates = _candidates(fs, host)
    roots: list[str] = []
    denied: list[str] = []
    variables: list[tuple[str, str]] = []

    def add(root: str, toolchain: Toolchain | None) -> None:
        # Most known roots are missing: the cheapest answer first.
        if not os.path.isdir(root) or _under_any(root, tuple(roots)):
            return
        roots.append(root)
        if toolchain is not None:
            denied.extend(_secrets(root, toolchain.secrets))
            variables.extend(
                (name, posixpath.join(root, relative) if relative else root)
                for name, relative in toolchain.variables
            )

    for root, toolchain in candidates.roots:
        if root != _COMMAND:
            add(root, toolchain)
            continue
        paths = _command_paths(argv0, candidates.path)
        writable = (*candidates.writable, *(() if workspace is None else (workspace,)))
        if writable and any(_under_any(path, writable) for path in paths):
            continue
        for path in paths:
            found = command_root(path, candidates.home)
            if found is not None and not _under_any(found, candidates.deny_read):
                add(found, None)
    return FoundToolchains(
        roots=tuple(roots), denied=tuple(dict.fromkeys(denied)), variables=tuple(variables)
    )


def _toolchain_named(entry: str, host: HostContext) -> Toolchain | None:
    """The known toolchain a listed path is (its credentials and variables), if it is one."""
    normal = posixpath.normpath(host.expand(entry))
    for toolchain in TOOLCHAINS:
        if posixpath.normpath(host.expand(toolchain.root)) == normal:
            return toolchain
    return None


def _command_paths(argv0: str, path: str) -> tuple[str, ...]:
    """Where the host's PATH has `argv0`, and where that leads (a symlink's target): a
    bare name only; a path the caller wrote chooses no reader."""
    if not argv0 or "/" in argv0:
        return ()
    for entry in path.split(os.pathsep):
        # Absolute entries only: a relative one is the caller's directory, no toolchain.
        found = posixpath.normpath(posixpath.join(entry, argv0))
        if posixpath.isabs(entry) and os.path.isfile(found) and os.access(found, os.X_OK):
            real = os.path.realpath(found)
            return (found,) if real == found else (found, real)
    return ()
