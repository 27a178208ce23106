"""The policy model: one pure value that every backend compiles to its own launch plan."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

import attrs

from mechasandbox.domain.limits import Limits


class NetworkMode(enum.Enum):
    NONE = "none"
    ALLOWLIST = "allowlist"
    FULL = "full"


class HostProcesses(enum.Enum):
    """Whether the command may see the host's process list (command lines included).

    Signalling, tracing and reading another process's environment or memory are never
    allowed; this only decides whether listing host processes must be prevented too.
    `hidden` needs a pid namespace (bubblewrap, containers); `visible` lets Landlock run.
    """

    HIDDEN = "hidden"
    VISIBLE = "visible"


class Enforcement(enum.Enum):
    """Strict refuses a run the backend cannot fully confine; best-effort runs and warns."""

    STRICT = "strict"
    BEST_EFFORT = "best-effort"


def _str_tuple(values: object) -> tuple[str, ...]:
    """Typed converter: a bare `converter=tuple` would erase the element type for mypy."""
    if isinstance(values, str):
        return (values,)
    if not isinstance(values, list | tuple | set | frozenset):
        raise TypeError(f"expected a list of strings, got {values!r}")
    result = tuple(str(v) for v in values)
    return result


# Secrets under the home directory that stay unreadable even where a backend exposes the
# home directory read-only (`~` is expanded against the host's HOME at compile time).
DEFAULT_DENY_READ: tuple[str, ...] = (
    "~/.ssh",
    "~/.aws",
    "~/.azure",
    "~/.config/gcloud",
    "~/.config/gh",
    "~/.docker",
    "~/.kube",
    "~/.gnupg",
    "~/.netrc",
    "~/.git-credentials",
    "~/.npmrc",
    "~/.pypirc",
    "~/.password-store",
    # Tokens of package managers whose toolchains are readable by default (see
    # `FilesystemPolicy.toolchains`): inside a toolchain's root, or beside it in the home.
    "~/.cargo/credentials",
    "~/.cargo/credentials.toml",
    "~/.local/share/uv/credentials",
    "~/.yarnrc",
    "~/.yarnrc.yml",
    "~/.bunfig.toml",
    "~/.gem/credentials",
    "~/.m2/settings.xml",
    "~/.gradle/gradle.properties",
    # Tokens of infrastructure, secret-manager and AI tools' command lines.
    "~/.terraform.d",
    "~/.vault-token",
    "~/.config/op",
    "~/.cache/huggingface/token",
    "~/.cache/huggingface/stored_tokens",
    "~/.huggingface/token",
    "~/.codex/auth.json",
    "~/.claude/.credentials.json",
    "~/.claude.json",
    # Keychains, cookies and browser profiles (saved passwords, session cookies): macOS's
    # places under ~/Library, then the Linux ones.
    "~/Library/Keychains",
    "~/Library/Cookies",
    "~/Library/Safari",
    "~/Library/Application Support/Google/Chrome",
    "~/Library/Application Support/Chromium",
    "~/Library/Application Support/BraveSoftware",
    "~/Library/Application Support/Microsoft Edge",
    "~/Library/Application Support/Arc",
    "~/Library/Application Support/Firefox",
    "~/.mozilla",
    "~/.config/google-chrome",
    "~/.config/chromium",
    "~/.config/BraveSoftware",
    "~/.config/microsoft-edge",
)

# `FilesystemPolicy.toolchains`: the toolchains under the home directory that exist, found
# when a run starts (see `backends.toolchains`).
TOOLCHAINS_AUTO = "auto"
TOOLCHAINS_NONE = "none"
# The umask of a run unless the policy says otherwise: what the command creates is
# readable by others, as it would be outside the sandbox (mode 644 files, 755 directories).
DEFAULT_UMASK = 0o022

# Paths inside the workspace whose content runs later, outside the sandbox: writing them
# would let a command plant code that the user's tools execute unconfined.
DEFAULT_PROTECTED: tuple[str, ...] = (
    ".git/hooks",
    ".git/config",
    ".git/info",
    # Where git looks for another repository's config and hooks: a `commondir` naming a
    # directory of the workspace, the submodules' own repositories, a worktree's config,
    # the linked worktrees' git directories (each with a `commondir` of its own).
    ".git/commondir",
    ".git/modules",
    ".git/config.worktree",
    ".git/worktrees",
    ".gitmodules",
    ".vscode",
    ".idea",
    ".envrc",
    ".env",
    ".bashrc",
    ".bash_profile",
    ".profile",
    ".zshrc",
    ".zprofile",
    ".mechasandbox.toml",
    ".openagents",
)


def _toolchains(values: object) -> tuple[str, ...]:
    """`toolchains`: "none" is no toolchain, as in a file; otherwise as `_str_tuple`."""
    return () if values == TOOLCHAINS_NONE else _str_tuple(values)


def _umask(_instance: object, _attribute: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ValueError(f"umask must be a number from 0 to 0o777, got {value!r}")


@attrs.frozen(kw_only=True)
class FilesystemPolicy:
    """Where a command may read and write, beyond the workspace and the system roots.

    Relative `protected` entries are relative to the workspace; everything else is an
    absolute path or starts with `~`. Deny rules win over allow rules.
    """

    readable: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    writable: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    deny_read: tuple[str, ...] = attrs.field(default=DEFAULT_DENY_READ, converter=_str_tuple)
    deny_write: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    protected: tuple[str, ...] = attrs.field(default=DEFAULT_PROTECTED, converter=_str_tuple)
    # Toolchain roots under the home directory made readable (never writable): "auto" for
    # those of the known toolchains that exist and the root of the command found on the
    # host's PATH, or paths; () for none. Credential files inside them stay denied.
    toolchains: tuple[str, ...] = attrs.field(default=(TOOLCHAINS_AUTO,), converter=_toolchains)
    umask: int = attrs.field(default=DEFAULT_UMASK, validator=_umask)


@attrs.frozen(kw_only=True)
class NetworkPolicy:
    """How far the command reaches beyond the machine, and which host unix sockets it reaches.

    Host unix sockets (`docker.sock`, the ssh agent, the user's D-Bus) are host control, not
    network: whatever the mode, the command reaches only the ones in `allow_unix_sockets`
    (absolute paths, or starting with `~`).
    """

    mode: NetworkMode = NetworkMode.NONE
    allow: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    deny: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    allow_unix_sockets: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)


# Variables a typical toolchain needs and that carry no secrets.
DEFAULT_ENV_ALLOW: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ")


# Variables that make the dynamic loader or the C library load code or data files from a
# path: a project file may not set them (see `config.narrowing`), and no launcher that runs
# on the host (bwrap, sandbox-exec, an engine's CLI) is ever given them.
LOADER_VARIABLE_PREFIXES: tuple[str, ...] = ("LD_", "DYLD_")
LOADER_VARIABLES: frozenset[str] = frozenset(
    {"GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF",
     "MALLOC_CHECK_", "MALLOC_TRACE", "GETCONF_DIR"}
)  # fmt: skip


def is_loader_variable(name: str) -> bool:
    return name.startswith(LOADER_VARIABLE_PREFIXES) or name in LOADER_VARIABLES


def _pairs(values: object) -> tuple[tuple[str, str], ...]:
    """`set` as (name, value) pairs: a mapping (`{"CI": "1"}`, as a file's `set = { CI =
    "1" }` reads) or pairs. Only the shape is made here: a policy is a hashable value, and
    a dict inside it would fail far from where it was written. Names and values are
    checked where every policy is (`config.validation`): a bad one is a `ConfigInvalid`."""
    if isinstance(values, Mapping):
        return tuple(values.items())
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise TypeError(f"expected a mapping of names to values, got {values!r}")
    return tuple(tuple(pair) if isinstance(pair, list | tuple) else pair for pair in values)


@attrs.frozen(kw_only=True)
class EnvironmentPolicy:
    """The command sees only `allow`ed host variables, `pass_through` ones, and `set` ones
    (a mapping of names to values, kept as pairs)."""

    allow: tuple[str, ...] = attrs.field(default=DEFAULT_ENV_ALLOW, converter=_str_tuple)
    pass_through: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    set: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_pairs)


@attrs.frozen(kw_only=True)
class Policy:
    filesystem: FilesystemPolicy = FilesystemPolicy()
    network: NetworkPolicy = NetworkPolicy()
    limits: Limits = Limits()
    environment: EnvironmentPolicy = EnvironmentPolicy()
    enforcement: Enforcement = Enforcement.STRICT
    host_processes: HostProcesses = HostProcesses.HIDDEN
