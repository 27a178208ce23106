"""The `Backend` protocol and the pieces every backend shares."""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import sys
from collections.abc import Iterable, Mapping
from typing import Protocol

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.domain.capabilities import Capabilities
from mechasandbox.domain.errors import (
    BackendUnavailable,
    ConfigInvalid,
    PolicyUnsupported,
    SandboxError,
)
from mechasandbox.domain.policy import Enforcement, EnvironmentPolicy, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult


@attrs.frozen(kw_only=True)
class HostContext:
    """The facts about the host a compiler needs, captured once so compilers stay pure."""

    env: tuple[tuple[str, str], ...]
    home: str
    uid: int
    gid: int
    platform: str

    @staticmethod
    def current() -> HostContext:
        home = os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
        return HostContext(
            env=tuple(sorted(os.environ.items())),
            home=home,
            uid=os.getuid(),
            gid=os.getgid(),
            platform=sys.platform,
        )

    def expand(self, path: str) -> str:
        """`~` against this host's home; the path itself is not resolved."""
        if path == "~" or path.startswith("~/"):
            return self.home + path[1:]
        return path


@attrs.frozen(kw_only=True)
class LaunchPlan:
    """What a backend would do, rendered for `mechasandbox policy` and golden tests.

    `sections` are (title, text) pairs: the bwrap argv, the SBPL profile, the rlimits...
    """

    backend: str
    sections: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...] = ()  # protections a run would not get
    notes: tuple[str, ...] = ()  # information that is no gap


class Backend(Protocol):
    """A sandbox backend. Probing never raises; compiling is pure; running returns a Result."""

    @property
    def name(self) -> str: ...

    def probe(self) -> Result[Capabilities, BackendUnavailable]: ...

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]: ...

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]: ...


# The whole environment of a launcher that runs on the host, outside the sandbox it sets up
# (bwrap, sandbox-exec): none of the command's. Its variables are the policy's, and a
# project layer writes those; in the launcher, the host's loader would act on them
# (LD_PRELOAD, LD_LIBRARY_PATH, GCONV_PATH, DYLD_INSERT_LIBRARIES...) as the caller,
# outside every confinement. The launcher hands the command its own (see each backend).
LAUNCHER_ENVIRONMENT: tuple[tuple[str, str], ...] = ()


def unsafe_variable(variables: Iterable[tuple[str, str]]) -> str | None:
    """Why one of `variables` cannot be handed on as arguments (a launcher reads them so:
    bwrap's `--setenv`, `env NAME=VALUE`), if one cannot: a NUL byte would end its argument
    early and make the rest arguments of the policy's choosing (a TOML string can hold
    one), and a name that is empty or holds a `=` is no name."""
    for name, value in variables:
        if not name or "=" in name or "\0" in name:
            return f"{name!r} is not an environment variable name"
        if "\0" in value:
            return f"the value of {name} holds a NUL byte"
    return None


def scrubbed_environment(policy: EnvironmentPolicy, host_env: Mapping[str, str]) -> dict[str, str]:
    """The command's environment: allowlisted and passed host variables, then explicit sets.

    Everything else of the host (API keys, tokens, cloud credentials) stays out.
    """
    env = {name: host_env[name] for name in policy.allow if name in host_env}
    env.update({name: host_env[name] for name in policy.pass_through if name in host_env})
    env.update(dict(policy.set))
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


@functools.lru_cache(maxsize=64)
def check_enforcement(
    capabilities: Capabilities, policy: Policy
) -> Result[tuple[str, ...], PolicyUnsupported]:
    """Strict: refuse when a required protection is missing. Best-effort: one warning each.
    Both are values, and an agent runs command after command under the same ones: the
    answer is remembered (15 µs a run otherwise)."""
    missing = capabilities.missing(policy)
    if not missing:
        return Success(capabilities.warnings)
    if policy.enforcement is Enforcement.STRICT:
        return Failure(PolicyUnsupported(backend=capabilities.backend, missing=missing))
    warnings = tuple(
        f"not enforced by {capabilities.backend}: {p.value}"
        + (f" ({reason})" if (reason := capabilities.detail(p)) else "")
        for p in missing
    )
    return Success(capabilities.warnings + warnings)


def with_notes(result: RunResult, backend: Backend) -> RunResult:
    """`result` with the notes of `backend`'s capabilities (the engine's version, the image,
    a pool: information, not gaps), when `backend` is the one that ran it; each note once,
    so that a wrapper (`auto`) and the facade may both ask."""
    probed = backend.probe()
    if isinstance(probed, Failure) or probed.unwrap().backend != result.backend:
        return result
    fresh = tuple(note for note in probed.unwrap().notes if note not in result.notes)
    return attrs.evolve(result, notes=result.notes + fresh) if fresh else result


# Directories that are never a workspace: the command may write its whole workspace, and
# these hold the system, every user's files, or the host's shared temporary files.
_SYSTEM_DIRECTORIES = frozenset(
    {"/", "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/Users", "/Volumes",
     "/private", "/private/tmp"}
)  # fmt: skip
# Trees no part of which is a workspace: the system's programs, libraries, configuration
# and state, kernel interfaces (`/lib/systemd/system` or `/var/lib/dpkg/info` written by a
# root caller's command would run as root later). Each with the subtrees that are.
_SYSTEM_TREES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("/etc", ()), ("/boot", ()), ("/proc", ()), ("/sys", ()), ("/dev", ()), ("/run", ()),
    ("/bin", ()), ("/sbin", ()), ("/lib", ()), ("/lib32", ()), ("/lib64", ()),
    ("/libx32", ()), ("/nix", ()), ("/snap", ()),
    ("/usr", ("/usr/src", "/usr/local/src")),
    ("/var", ("/var/tmp",)),
    # macOS: the system, Homebrew's tree; its temporary directories are per-user folders
    ("/System", ()), ("/Library", ()), ("/opt/homebrew", ()), ("/private/etc", ()),
    ("/private/var", ("/private/var/folders", "/private/var/tmp")),
)  # fmt: skip


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@functools.lru_cache(maxsize=8)
def _homes(home_variable: str | None, uid: int) -> frozenset[str]:
    """The caller's home directory, as HOME says and as the password database says."""
    homes = {home_variable or ""}
    with contextlib.suppress(KeyError):  # a uid without an entry (containers)
        homes.add(pwd.getpwuid(uid).pw_dir)
    # ("/" as a home, as some service accounts have, would make every path "inside" it.)
    return frozenset(real for home in homes if home and (real := os.path.realpath(home)) != "/")


@functools.cache
def _every_home() -> frozenset[str]:
    """Every user's home directory, as real paths (a root caller must not hand another
    user's home, its rc files and keys, to a command either). Read once: a user added
    later is caught by a new process."""
    homes = set()
    for entry in pwd.getpwall():
        if entry.pw_dir.startswith("/") and (real := os.path.realpath(entry.pw_dir)) != "/":
            homes.add(real)
    return frozenset(homes)


def forbidden_workspace(real: str, homes: Iterable[str]) -> str | None:
    """Why the real path `real` cannot be a workspace, or None."""
    if real in _SYSTEM_DIRECTORIES:
        return f"{real} is a system directory"
    for tree, open_below in _SYSTEM_TREES:
        if _inside(real, tree) and not any(
            real != below and _inside(real, below) for below in open_below
        ):
            return f"{real} is in the system tree {tree}"
    for home in (*homes, *_every_home()):
        if _inside(home, real):
            return f"{real} is a home directory or contains one (its secrets and rc files)"
        if _inside(real, home) and real[len(home) + 1 :].startswith("."):
            return f"{real} is in a hidden directory of {home} (configuration, credentials)"
    return None


def _same_directory(real: str, others: Iterable[str]) -> str | None:
    """The one of `others` that `real` is, by device and inode: a bind mount of the home
    directory has another path but the same files."""
    try:
        found = os.stat(real)
    except OSError:
        return None
    for other in others:
        with contextlib.suppress(OSError):
            seen = os.stat(other)
            if (seen.st_dev, seen.st_ino) == (found.st_dev, found.st_ino):
                return other
    return None


def check_workspace(request: RunRequest) -> Result[str, ConfigInvalid]:
    """The workspace must be an existing directory that is not `/`, the home directory (or
    above it) or a system directory; returned as an absolute real path."""
    real = os.path.realpath(request.workspace)
    if not os.path.isdir(real):
        return Failure(
            ConfigInvalid(
                problem=f"workspace {request.workspace!r} is not an existing directory",
                field="workspace",
            )
        )
    homes = _homes(os.environ.get("HOME"), os.getuid())
    forbidden = forbidden_workspace(real, homes)
    if forbidden is None and (same := _same_directory(real, ("/", *homes))) is not None:
        forbidden = f"{real} is {same} under another name (a bind mount)"
    if forbidden is not None:
        return Failure(
            ConfigInvalid(
                problem=f"workspace {request.workspace!r} refused: {forbidden}; use a "
                "project directory",
                field="workspace",
            )
        )
    return Success(real)
