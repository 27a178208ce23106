"""What decides whether this process may build namespaces and filters: the facts a
remembered probe (`backends.probe_cache`) is keyed on, read in well under a millisecond."""

from __future__ import annotations

import os

# Switches of distributions and LSMs that allow or refuse unprivileged user namespaces,
# the per-namespace limits, and what seccomp supports.
_FILES = (
    "/proc/sys/kernel/unprivileged_userns_clone",
    "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    "/proc/sys/kernel/apparmor_restrict_unprivileged_unconfined",
    "/proc/sys/user/max_user_namespaces",
    "/proc/sys/user/max_mnt_namespaces",
    "/proc/sys/user/max_pid_namespaces",
    "/proc/sys/user/max_net_namespaces",
    "/proc/sys/user/max_ipc_namespaces",
    "/proc/sys/user/max_uts_namespaces",
    "/proc/sys/user/max_cgroup_namespaces",
    "/proc/sys/kernel/seccomp/actions_avail",
    "/sys/fs/selinux/enforce",
    "/proc/self/attr/current",  # this process's LSM label (AppArmor profile, SELinux context)
)
# This process's own restrictions (an outer sandbox, a container's capability set).
_STATUS_FIELDS = ("NoNewPrivs", "Seccomp", "Seccomp_filters", "CapEff", "CapBnd")
# The namespaces this process is in: another container or an outer sandbox is another key.
_NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")


def _read(path: str, size: int = 4096) -> str:
    """A small kernel file's content, or "" when it is absent or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return os.read(fd, size).decode(errors="replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


def _namespace(name: str) -> str:
    try:
        return os.readlink(f"/proc/self/ns/{name}")
    except OSError:
        return ""


def namespace_facts() -> dict[str, str]:
    """The kernel, the sysctls and LSM state, this process's restrictions and namespaces."""
    uname = os.uname()
    facts = {"kernel": f"{uname.release} {uname.version} {uname.machine}"}
    facts.update({path: _read(path) for path in _FILES})
    status = dict(
        line.split(":", 1) for line in _read("/proc/self/status", 65536).splitlines() if ":" in line
    )
    facts.update({f"status.{field}": status.get(field, "").strip() for field in _STATUS_FIELDS})
    facts.update({f"ns.{name}": _namespace(name) for name in _NAMESPACES})
    facts["uid"] = f"{os.getuid()}:{os.geteuid()}:{os.getgid()}"
    return facts


def executable_facts(path: str) -> dict[str, str] | None:
    """The identity of the executable at `path` (what a change of it changes), or None if
    it cannot be examined."""
    try:
        real = os.path.realpath(path)
        info = os.stat(real)
    except OSError:
        return None
    return {
        "executable": path,
        "real": real,
        "identity": (
            f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"
            f":{info.st_mode:o}:{info.st_uid}"
        ),
    }
