"""The system trees every Linux backend exposes read-only (missing ones are skipped), and
the secrets in them that every Linux backend masks."""

from __future__ import annotations

SYSTEM_ROOTS: tuple[str, ...] = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/nix/store",
)


# Secrets of the system that a sandboxed uid 0 (root on the host maps to root in the
# sandbox) could otherwise read through the read-only /etc. Globs are expanded at survey.
ETC_SECRETS: tuple[str, ...] = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh/ssh_host_*_key",
    "/etc/ssl/private",
    "/etc/wireguard",
    "/etc/NetworkManager/system-connections",
    "/etc/credstore",
    "/etc/credstore.encrypted",
)
