"""What every Seatbelt profile allows of macOS itself, as data, each entry with its reason.

The compiler (`sbpl`) writes these into every profile; the structural checker
(`sbpl_check`) accepts exactly these fixed paths, names and regexes; docs/backends-macos.md
has the table "allowance -> why -> which peer grants it". The peers are openai/codex
(`codex-rs/core/src/seatbelt_*.sbpl`, `codex-rs/sandboxing/src/*.sbpl`) and
anthropic-experimental/sandbox-runtime (`src/sandbox/macos-sandbox-utils.ts`); codex's lists
are the baseline, and where this module differs the reason is written beside the entry.
Nothing here names a path of the user: those are `-D` parameters (see `sbpl`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping

# Homebrew's prefixes (Apple silicon, Intel): only the subtrees that hold programs,
# libraries, headers and their data. Never `var` (databases, logs, service state: a
# PostgreSQL or Redis data directory, configs with passwords) nor the prefix as a whole.
# `etc` stays readable: certificate bundles (`etc/openssl@3/cert.pem`, `etc/ca-certificates`)
# and the tools' own configuration live there. `Library` (`/opt/homebrew`) and `Homebrew`
# (`/usr/local`) hold `brew` itself (`brew --prefix` in build scripts). MacPorts
# (`/opt/local`) likewise, without its `var` (its registry and build trees).
HOMEBREW_PREFIXES: tuple[str, ...] = ("/opt/homebrew", "/usr/local")
HOMEBREW_SUBTREES: tuple[str, ...] = (
    "bin",
    "sbin",
    "lib",
    "libexec",
    "include",
    "share",
    "opt",
    "Cellar",
    "Caskroom",
    "Frameworks",
    "etc",
)
PACKAGE_TREES: tuple[str, ...] = (
    *(f"{prefix}/{sub}" for prefix in HOMEBREW_PREFIXES for sub in HOMEBREW_SUBTREES),
    "/opt/homebrew/Library",
    "/usr/local/Homebrew",
    *(
        f"/opt/local/{sub}"
        for sub in ("bin", "sbin", "lib", "libexec", "include", "share", "etc", "Library")
    ),
)

# Read-only system trees a toolchain needs: binaries, libraries, frameworks, the dyld shared
# cache (under /System/Library and the cryptexes), developer tools, package managers.
# `/System` is not allowed as a whole: `/System/Volumes/Data` is a second view of the
# user's data volume, home directories included. `/usr` only by its system subtrees
# (`/usr/local` is Homebrew's on Intel: see above). Nix: the store and the profiles, not
# `/nix/var` whole. Xcode is not here: its real path is a parameter (`developer_roots`).
SYSTEM_READ_SUBPATHS: tuple[str, ...] = (
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/libexec",
    "/usr/share",
    "/bin",
    "/sbin",
    "/System/Library",
    "/System/Cryptexes",
    "/System/Volumes/Preboot/Cryptexes",
    "/System/iOSSupport",
    "/Library/Apple",
    "/Library/Developer",
    "/Library/Frameworks",
    "/Library/Java",
    "/Library/Preferences",
    "/Library/Fonts",
    *PACKAGE_TREES,
    "/nix/store",
    "/nix/var/nix/profiles",
    "/private/etc",
    "/private/var/db/timezone",
    "/private/var/db/dyld",
    "/private/var/select",
)

XCODE_SELECT_LINK = "/private/var/db/xcode_select_link"
DEFAULT_DEVELOPER_DIR = "/Applications/Xcode.app/Contents/Developer"

# Single files: `/bin/sh` follows /private/var/select/sh, `xcrun` reads the selected Xcode;
# `/dev/autofs_nowait` is opened by the file APIs that must not trigger an automount.
SYSTEM_READ_LITERALS: tuple[str, ...] = (
    XCODE_SELECT_LINK,
    "/dev/random",
    "/dev/urandom",
    "/dev/zero",
    "/dev/null",
    "/dev/autofs_nowait",
)
# dtrace's helper: every process linked with USDT probes (node, python, ruby, the JVM)
# registers them at start-up by writing and ioctl-ing this device.
DTRACE_HELPER = "/dev/dtracehelper"

# The firmlink-style symlinks every path lookup may cross (`/tmp` -> `private/tmp`).
SYSTEM_METADATA_LITERALS: tuple[str, ...] = ("/", "/etc", "/tmp", "/var", "/private", "/dev")

# sysctls that describe the machine, the OS and the process table (host processes are
# visible on Seatbelt anyway: `ps`, psutil and our own tests list them), and nothing about
# another process's arguments or environment: `kern.procargs2` stays denied, so `ps`
# shows other processes' names, not their command lines.
SYSCTL_PREFIXES: tuple[str, ...] = (
    "hw.",
    "machdep.cpu.",
    "kern.proc.pid.",
    "kern.proc.pgrp.",
    "kern.proc.all",
    "net.routetable.",
)
SYSCTL_NAMES: tuple[str, ...] = (
    "kern.argmax",
    "kern.boottime",
    "kern.hostname",
    "kern.maxfiles",
    "kern.maxfilesperproc",
    "kern.maxproc",
    "kern.ngroups",
    "kern.osproductversion",
    "kern.osrelease",
    "kern.ostype",
    "kern.osvariant_status",
    "kern.osversion",
    "kern.secure_kernel",
    "kern.tcsm_available",
    "kern.tcsm_enable",
    "kern.usrstack64",
    "kern.version",
    "machdep.ptrauth_enabled",
    "security.mac.lockdown_mode_state",
    "sysctl.proc_cputype",
    "sysctl.proc_translated",
    "vm.loadavg",
)
# Java reads the CPU grade through a "write" (it passes a buffer in); nothing else is
# written. (sandbox-runtime also lets V8 write `kern.tcsm_enable`: not granted, V8 runs
# without it.)
SYSCTL_WRITE_NAMES: tuple[str, ...] = ("kern.grade_cputype",)

# getpwuid/getgrgid (whoami, git, ssh config lookups), group membership checks, libnotify
# (timezone changes), the per-user temporary and cache directories (confstr), and the
# preferences daemon (read-only: `user-preference-read`).
MACH_SERVICES: tuple[str, ...] = (
    "com.apple.system.opendirectoryd.libinfo",
    "com.apple.system.opendirectoryd.membership",
    "com.apple.system.notification_center",
    "com.apple.bsd.dirhelper",
    "com.apple.cfprefsd.daemon",
    "com.apple.cfprefsd.agent",
)
MACH_LOCAL_SERVICES: tuple[str, ...] = ("com.apple.cfprefsd.agent",)
# Only where the command may reach the network at all (allowlist and full): certificate
# trust (trustd, which with ocspd may fetch OCSP/CRL responses and intermediates itself,
# outside the proxy), the security server (keychain-held trust settings), the network
# and DNS configuration that Go's and Swift's clients read. Network `none` gets none.
MACH_SERVICES_TLS: tuple[str, ...] = (
    "com.apple.trustd.agent",
    "com.apple.SecurityServer",
    "com.apple.ocspd",
    "com.apple.networkd",
    "com.apple.SystemConfiguration.configd",
    "com.apple.SystemConfiguration.DNSConfiguration",
)
# Full network only: the system resolver.
MACH_SERVICES_DNS: tuple[str, ...] = ("com.apple.dnssd.service",)
# The system resolver's socket: getaddrinfo asks mDNSResponder through it (full network only).
MDNS_RESPONDER_SOCKET = "/private/var/run/mDNSResponder"

# POSIX shared memory, by name: what the preferences and notification daemons publish
# (read), and the segments the command makes itself for Python's
# `multiprocessing.shared_memory` (`/psm_<hex>`) and OpenMP's registration (libomp, PyTorch).
# Not every name: a segment of another program of the user is not the command's.
SHM_READ_PREFIXES: tuple[str, ...] = ("apple.cfprefs.",)
SHM_READ_NAMES: tuple[str, ...] = ("apple.shm.notification_center",)
SHM_OWN_REGEX = "^/(psm_[0-9a-f]+|__KMP_REGISTERED_LIB_[0-9]+)$"


def _any_case(word: str) -> str:
    """`word` as a regex matching it in any letter case (APFS is case-insensitive by
    default: `.GIT/hooks` created by the command is the `.git/hooks` git reads)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


def _escaped(word: str) -> str:
    return _any_case(word).replace(".", r"\.")


# Where git and husky find code to run on the host, at any depth below a writable root: a
# nested repository's or a submodule's (`.git/modules/NAME/`) or a linked worktree's
# (`.git/worktrees/NAME/`) hooks, config, config.worktree and commondir, and husky's hook
# directory. One path-free regex each, so no path reaches the profile text; the compiler
# scopes them to the workspace and the policy's writable paths (not the private TMPDIR,
# which is removed with the run: `git init` there keeps working).
_GIT_ENTRIES = "|".join(_escaped(n) for n in ("hooks", "config", "config.worktree", "commondir"))
GIT_PLACES_REGEX = (
    f"/{_escaped('.git')}/"
    f"(({_escaped('modules')}/.+|{_escaped('worktrees')}/[^/]+)/)?"
    f"({_GIT_ENTRIES})(/|$)"
)
HUSKY_REGEX = f"/{_escaped('.husky')}(/|$)"
PROTECTED_NAME_REGEXES: tuple[str, ...] = (GIT_PLACES_REGEX, HUSKY_REGEX)
# ... and the directories holding them cannot be renamed away and back (`mv sub/.git g;
# edit g/hooks/x; mv g sub/.git`): no unlink or rename of a `.git`, its `modules` and
# `worktrees`, or a `.husky`, below those roots. (Renaming a directory above them is
# harmless: the regexes match at any depth.)
KEEP_NAME_REGEX = (
    f"/({_escaped('.git')}(/({_escaped('modules')}|{_escaped('worktrees')}))?"
    f"|{_escaped('.husky')})$"
)

# The command's own pseudo-terminals.
TTY_REGEX = "^/dev/ttys[0-9]+$"


def developer_roots(
    env: Mapping[str, str],
    *,
    readlink: Callable[[str], str | None],
    realpath: Callable[[str], str],
) -> tuple[str, ...]:
    """The Xcode bundles `/usr/bin/git`, `clang`, `make` and `python3` (xcrun shims) run
    from, at their real paths: what `xcode-select -p` would say (the host's
    `DEVELOPER_DIR`, else the `xcode-select --switch` link, else the default) resolved,
    as its `.app` bundle. Runner images keep Xcode at `/Applications/Xcode_16.x.app`
    (`Xcode.app` a symlink to it) and Seatbelt matches real paths only.

    Only a `.app` bundle is accepted: a `DEVELOPER_DIR` naming anything else (the home
    directory) makes nothing readable. The Command Line Tools live under
    /Library/Developer, which is readable anyway."""
    candidates = [env.get("DEVELOPER_DIR", ""), readlink(XCODE_SELECT_LINK) or ""]
    roots: list[str] = []
    for candidate in (*candidates, DEFAULT_DEVELOPER_DIR):
        if not posixpath.isabs(candidate):
            continue
        bundle = _app_bundle(realpath(posixpath.normpath(candidate)))
        if bundle is not None and bundle not in roots:
            roots.append(bundle)
    return tuple(roots)


def _app_bundle(path: str) -> str | None:
    """The outermost `NAME.app` directory holding `path` (None when there is none)."""
    parts = path.split("/")
    for index, part in enumerate(parts):
        if part.endswith(".app") and len(part) > len(".app") and index > 0:
            return "/".join(parts[: index + 1])
    return None
