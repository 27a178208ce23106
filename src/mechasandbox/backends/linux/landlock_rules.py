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
    from collections.abc import Callable
    from typing import Any, TypeAlias

    # A directory's entries: (path, whether it is a symlink), in name order.
    Entries: TypeAlias = tuple[tuple[str, bool], ...]

# Rights that mean something on a non-directory; a rule on a file with others is EINVAL.
FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)
READ_DIR = 1 << 3
ISOLATE_TARGET = "mechasandbox.backends.linux.landlock_hook:isolate"
RESTRICT_TARGET = "mechasandbox.backends.linux.landlock_hook:restrict_self"
SCOPE_TARGET = "mechasandbox.backends.linux.landlock_hook:scope"


def list_directory(path: str) -> Entries:
    """The entries of the directory `path` in name order, each as (its path, whether it is
    a symlink). FileNotFoundError / NotADirectoryError when `path` is not a directory."""
    with os.scandir(path) as scan:
        return tuple(sorted((entry.path, entry.is_symlink()) for entry in scan))


def expand_rules(
    rules: list[list[Any]],
    lister: Callable[[str], Entries] = list_directory,
) -> list[tuple[str, int]]:
    """Rules `[path, access, required, exclusions]` -> concrete `(path, access)` pairs.

    Landlock grants a right on a whole subtree and cannot take it back below. A rule with
    `exclusions` (`[[path, residual_access], ...]` strictly inside it) is therefore carved:
    the directory itself keeps only the rights every excluded path keeps (plus READ_DIR,
    so it can still be listed), and each child is granted in turn: whole when no exclusion
    lies inside it, carved again when one does, with its residual rights when excluded.
    Symlinks are skipped: a rule on one would apply to its target, wherever that is.
    `lister` lists a carved directory (`list_directory`; a session passes one that
    remembers unchanged directories, see `landlock_listings`).
    A path that does not exist is not looked for here: whoever opens the pairs' paths skips
    one it does not find (the exec shim and `landlock_hook` both do), which costs a missing
    path one failed open there instead of a look here at every path.
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
            entries = lister(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry, is_symlink in entries:
            if not is_symlink:
                grant(entry, access, dict(inside))

    for path, access, _required, exclusions in rules:
        grant(path, int(access), _narrowest(exclusions))
    return result


def _narrowest(exclusions: list[list[Any]]) -> dict[str, int]:
    """Exclusions by path; a path excluded twice (denied reading, and protected) keeps
    only the rights both leave it."""
    merged: dict[str, int] = {}
    for path, access in exclusions:
        merged[str(path)] = merged.get(str(path), -1) & int(access)
    return merged


def rule_pairs(argument: dict[str, Any]) -> list[tuple[str, int]]:
    """The `(path, access)` pairs of a `restrict_self` argument: `expanded` when the caller
    expanded its rules already (a session, see `landlock_session`), else its `rules`
    expanded now."""
    expanded = argument.get("expanded")
    if expanded is not None:
        return [(str(path), int(access)) for path, access in expanded]
    return expand_rules(argument["rules"])


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
    Expanded anew for every run (a session's come expanded, see `rule_pairs`); only their
    encoding is remembered (a session's commands mostly expand to the same rules)."""
    records.add_encoded(
        _restrict_records(
            (
                int(argument["handled_fs"]),
                int(argument["handled_net"]),
                int(argument["scoped"]),
                ruleset_attr_size(int(argument["abi"])),
            ),
            tuple(rule_pairs(argument)),
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
