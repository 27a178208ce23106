"""The Landlock rules of a run as concrete (path, access) pairs, and their native form.

Shared by the child-side hook (`landlock_hook`, in the spawn helper's Python child) and the
host, which hands a run to the exec shim as records (see `runner.native`): both expand the
rules with `expand_rules`, and the shim makes the same system calls as the hook. Standard
library only: the spawn helper imports it.
"""

from __future__ import annotations

import base64
import functools
import os

from mechasandbox.runner import native

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the spawn helper does not import `typing`
if TYPE_CHECKING:
    from typing import Any

# Rights that mean something on a non-directory; a rule on a file with others is EINVAL.
FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)
READ_DIR = 1 << 3
ISOLATE_TARGET = "mechasandbox.backends.linux.landlock_hook:isolate"
RESTRICT_TARGET = "mechasandbox.backends.linux.landlock_hook:restrict_self"
SCOPE_TARGET = "mechasandbox.backends.linux.landlock_hook:scope"


def expand_rules(
    rules: list[list[Any]],
) -> list[tuple[str, int]]:
    """Rules `[path, access, required, exclusions]` -> concrete `(path, access)` pairs.

    Landlock grants a right on a whole subtree and cannot take it back below. A rule with
    `exclusions` (`[[path, residual_access], ...]` strictly inside it) is therefore carved:
    the directory itself keeps only the rights every excluded path keeps (plus READ_DIR,
    so it can still be listed), and each child is granted in turn: whole when no exclusion
    lies inside it, carved again when one does, with its residual rights when excluded.
    Symlinks are skipped: a rule on one would apply to its target, wherever that is.
    Missing optional paths are skipped; a missing required one is an error.
    """
    result: list[tuple[str, int]] = []

    def grant(path: str, access: int, exclusions: dict[str, int]) -> None:
        if path in exclusions:
            access &= exclusions.pop(path)
            if not access:
                return
        inside = {p: a for p, a in exclusions.items() if p.startswith(path.rstrip("/") + "/")}
        if not inside:
            result.append((path, access))
            return
        own = access
        for residual in inside.values():
            own &= residual
        own |= access & READ_DIR
        if own:
            result.append((path, own))
        try:
            entries = sorted(os.scandir(path), key=lambda entry: entry.name)
        except NotADirectoryError:
            return
        for entry in entries:
            if entry.is_symlink():
                continue
            grant(entry.path, access, dict(inside))

    for path, access, required, exclusions in rules:
        if not required and not os.path.lexists(path):
            continue
        grant(path, int(access), {str(p): int(a) for p, a in exclusions})
    return result


def ruleset_attr_size(abi: int) -> int:
    """The size of `struct landlock_ruleset_attr` at `abi`: it grew with the ABI (8 bytes at
    ABI 1-3, 16 at 4-5, 24 from 6)."""
    return 24 if abi >= 6 else 16 if abi >= 4 else 8


def encode_isolate(argument: dict[str, Any], records: native.Records) -> None:
    """`landlock_hook.isolate` as records: capabilities, no_new_privs, seccomp."""
    if argument.get("drop_capabilities", True):
        records.drop_capabilities()
    records.no_new_privs()
    seccomp = argument.get("seccomp")
    if seccomp:
        records.seccomp(base64.b64decode(seccomp))


def encode_restrict(argument: dict[str, Any], records: native.Records) -> None:
    """`landlock_hook.restrict_self` as records. The rules are expanded here, in the host,
    a moment before the shim opens their paths (the hook lists them in the child): a path
    that vanishes in between is skipped by both, as it is between listing and opening.
    Expanded anew for every run; only their encoding is remembered (a session's commands
    mostly expand to the same rules)."""
    records.add_encoded(
        _restrict_records(
            (
                int(argument["handled_fs"]),
                int(argument["handled_net"]),
                int(argument["scoped"]),
                ruleset_attr_size(int(argument["abi"])),
            ),
            tuple(expand_rules(argument["rules"])),
            tuple((int(port), int(access)) for port, access in argument["net_rules"]),
            int(argument.get("restrict_flags", 0)),
        )
    )


@functools.lru_cache(maxsize=8)
def _restrict_records(
    handled: tuple[int, int, int, int],
    rules: tuple[tuple[str, int], ...],
    net_rules: tuple[tuple[int, int], ...],
    flags: int,
) -> bytes:
    records = native.Records()
    records.landlock_ruleset(*handled)
    for path, access in rules:
        records.landlock_path(access, path)
    for port, access in net_rules:
        records.landlock_port(access, port)
    records.landlock_restrict(flags)
    return records.body()


def scope_argument(argument: dict[str, Any]) -> dict[str, Any]:
    """The `restrict_self` argument of a scope-only ruleset (see `landlock_hook.scope`)."""
    return {
        "abi": int(argument["abi"]),
        "handled_fs": 0,
        "handled_net": 0,
        "scoped": int(argument["scoped"]),
        "rules": [],
        "net_rules": [],
    }


def encode_scope(argument: dict[str, Any], records: native.Records) -> None:
    """`landlock_hook.scope` as records: no_new_privs, then the scope-only ruleset."""
    records.no_new_privs()
    encode_restrict(scope_argument(argument), records)


native.register(ISOLATE_TARGET, encode_isolate)
native.register(SCOPE_TARGET, encode_scope)
native.register(RESTRICT_TARGET, encode_restrict)
