"""The system trees every Linux backend exposes read-only (missing ones are skipped)."""

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
