"""The rules' expansion a Landlock session keeps between its commands.

Each command's rules are expanded anew (`landlock_rules.expand_rules`): a carved directory
(the workspace, `~/.cargo`: one with a protected path inside) is granted child by child, so
what it holds is listed before every command. It rarely changes between two commands. So
each listing is kept with the stamp of the directory it was taken from (device, inode,
ctime: see `stamps`) and used again while the directory's stamp is the same; and while
every directory the last expansion listed is unchanged, that expansion is the next one
(the expansion depends on the rules and those listings alone): a `stat` per carved
directory instead of a listing and the walk. Each stamp is taken before its listing, so a
change made during the listing leaves the next stamp different.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mechasandbox.backends.linux.landlock_rules import expand_rules, list_directory
from mechasandbox.backends.stamps import directory_stamp, settled

if TYPE_CHECKING:
    from mechasandbox.backends.linux.landlock_rules import Entries

# A session carves a handful of directories; more than this is a workspace with many
# protected paths in many places: what is kept is forgotten and listed again.
MAX_LISTINGS = 256

# (device, inode, ctime) of a directory; `_ABSENT` where there is none (the expansion
# grants such a path the same whatever is there instead, and nothing below it).
_Stamp = tuple[int, ...]
_ABSENT: _Stamp = ()


def _stamp(path: str) -> _Stamp:
    """Raises OSError for what the expansion does not expect either (EACCES, ELOOP)."""
    return directory_stamp(path) or _ABSENT  # followed, as the listing follows a rule path


class RememberedListings:
    """`list_directory`, remembering unchanged directories (see the module). One per
    session (its commands run one at a time): not shared between threads. `listed`: the
    directories asked for since it was last cleared, with their stamps (None: not one to
    trust next time)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[_Stamp, Entries]] = {}
        self.listed: list[tuple[str, _Stamp | None]] = []

    def __call__(self, path: str) -> Entries:
        stamp = _stamp(path)
        if stamp == _ABSENT:
            self.listed.append((path, stamp))
            raise NotADirectoryError(path)  # as the listing would (see `expand_rules`)
        known = self._known.get(path)
        trusted = settled(stamp[2])
        self.listed.append((path, stamp if trusted else None))
        if known is not None and known[0] == stamp:
            return known[1]
        entries = list_directory(path)
        if trusted:
            if len(self._known) >= MAX_LISTINGS:
                self._known.clear()
            self._known[path] = (stamp, entries)
        else:
            self._known.pop(path, None)
        return entries


class RememberedExpansion:
    """`expand_rules` for one session's rules (see the module). Raises OSError as
    `expand_rules` does (a carved directory that cannot be listed)."""

    def __init__(self) -> None:
        self.listings = RememberedListings()
        self._last: tuple[object, tuple[tuple[str, _Stamp], ...], list[tuple[str, int]]] | None
        self._last = None

    def __call__(self, rules: list[list[Any]]) -> list[tuple[str, int]]:
        last = self._last
        if last is not None and last[0] is rules and _unchanged(last[1]):
            return last[2]
        self.listings.listed.clear()
        pairs = expand_rules(rules, self.listings)
        listed = self.listings.listed
        kept = tuple((path, stamp) for path, stamp in listed if stamp is not None)
        self._last = (rules, kept, pairs) if len(kept) == len(listed) else None
        return pairs


def _unchanged(listed: tuple[tuple[str, _Stamp], ...]) -> bool:
    for path, stamp in listed:
        try:
            if _stamp(path) != stamp:
                return False
        except OSError:
            return False
    return True
