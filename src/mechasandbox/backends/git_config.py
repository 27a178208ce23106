"""A reader of git's configuration syntax, for finding what the host's git will run.

The host's own `git config` is not run on the workspace's repository: that repository may
have been written by someone hostile (a clone, an earlier run), and running git there is
what is being guarded against (`safe.directory` checks, `includeIf` conditions that run
code through `hasconfig`, future options). This reader only tokenises: sections, names,
values with git's quoting and escapes, and `include.path` / `includeIf.<cond>.path`
followed to their files (every condition taken as true: a condition can change while the
run goes, e.g. `onbranch:` when the command switches branch). It never runs anything.

Where git would stop at a syntax error, this reader stops there too and keeps what came
before (git runs nothing from a configuration it cannot read; what was read is still
protected).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable

import attrs

from mechasandbox.backends.stamps import settled

# git's own limit on nested includes (config.c MAX_INCLUDE_DEPTH).
MAX_INCLUDE_DEPTH = 10
# A configuration file bigger than this is not read further: what was read is used.
MAX_CONFIG_BYTES = 1 << 20


@attrs.frozen(kw_only=True)
class ConfigEntry:
    """One `name = value` line: `section` lower-cased, `subsection` as written (or None),
    `name` lower-cased, `value` None for a bare name (a boolean true). `origin`: the file."""

    section: str
    subsection: str | None
    name: str
    value: str | None
    origin: str

    @property
    def key(self) -> str:
        middle = f".{self.subsection}" if self.subsection is not None else ""
        return f"{self.section}{middle}.{self.name}"


class _Syntax(Exception):
    """Where git would report a bad config line."""


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text.replace("\r\n", "\n").removeprefix("\ufeff")
        self.at = 0

    def next(self) -> str:
        """The next character; at the end, a newline (as git's get_next_char)."""
        if self.at >= len(self.text):
            self.at = len(self.text) + 1
            return "\n"
        char = self.text[self.at]
        self.at += 1
        return char

    def at_end(self) -> bool:
        return self.at >= len(self.text)


def _is_key_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "-")


def _section(reader: _Reader) -> tuple[str, str | None]:
    """After `[`: `[section]`, `[section "sub"]` (sub verbatim) or `[section.sub]`."""
    name = ""
    while True:
        char = reader.next()
        if char == "]":
            break
        if char in " \t":
            return name.lower(), _subsection(reader)
        if not (_is_key_char(char) or char == "."):
            raise _Syntax
        name += char
    section, dot, sub = name.lower().partition(".")
    if not section:
        raise _Syntax
    return section, (sub if dot else None)


def _subsection(reader: _Reader) -> str:
    char = reader.next()
    while char in " \t":
        char = reader.next()
    if char != '"':
        raise _Syntax
    sub = ""
    while True:
        char = reader.next()
        if char == "\n":
            raise _Syntax
        if char == '"':
            break
        if char == "\\":
            char = reader.next()
            if char == "\n":
                raise _Syntax
        sub += char
    if reader.next() != "]":
        raise _Syntax
    return sub


def _value(reader: _Reader) -> str:
    """After `=`: git's parse_value (quotes, escapes, comments, line continuations)."""
    value: list[str] = []
    quote = comment = False
    spaces = 0
    while True:
        char = reader.next()
        if char == "\n":
            if quote:
                raise _Syntax
            return "".join(value)
        if comment:
            continue
        if char.isspace() and not quote:
            if value:
                spaces += 1
            continue
        if not quote and char in "#;":
            comment = True
            continue
        value.append(" " * spaces)
        spaces = 0
        if char == "\\":
            char = reader.next()
            if char == "\n":
                continue
            escaped = {"t": "\t", "b": "\b", "n": "\n", "\\": "\\", '"': '"'}.get(char)
            if escaped is None:
                raise _Syntax
            value.append(escaped)
            continue
        if char == '"':
            quote = not quote
            continue
        value.append(char)


def parse_config(text: str, origin: str = "") -> tuple[ConfigEntry, ...]:
    """The entries of one configuration file's text, in order, up to a syntax error."""
    entries: list[ConfigEntry] = []
    with contextlib.suppress(_Syntax):
        _parse(_Reader(text), entries, origin)
    return tuple(entries)


def _parse(reader: _Reader, entries: list[ConfigEntry], origin: str) -> None:
    """git's git_parse_source: appends to `entries` until the end or a syntax error."""
    section: tuple[str, str | None] | None = None
    comment = False
    while not reader.at_end():
        char = reader.next()
        if char == "\n":
            comment = False
            continue
        if comment or char.isspace():
            continue
        if char in "#;":
            comment = True
            continue
        if char == "[":
            section = _section(reader)
            continue
        if section is None or not (char.isascii() and char.isalpha()):
            raise _Syntax
        name = char
        char = reader.next()
        while _is_key_char(char):
            name += char
            char = reader.next()
        while char in " \t":
            char = reader.next()
        value: str | None = None
        if char != "\n":
            if char != "=":
                raise _Syntax
            value = _value(reader)
        entries.append(
            ConfigEntry(
                section=section[0],
                subsection=section[1],
                name=name.lower(),
                value=value,
                origin=origin,
            )
        )


def expand_path(value: str, *, relative_to: str, home: str) -> str | None:
    """A path-valued setting as git reads it: `~/` against the home directory, relative
    paths against `relative_to`; None for what names no path here (`~user/`, `%(prefix)/`,
    an empty value)."""
    if not value:
        return None
    if value == "~" or value.startswith("~/"):
        return os.path.normpath(home + value[1:]) if home else None
    if value.startswith(("~", "%(prefix)/")):
        return None
    return os.path.normpath(os.path.join(relative_to, value))


def is_include(entry: ConfigEntry) -> bool:
    return entry.name == "path" and (
        (entry.section == "include" and entry.subsection is None)
        or (entry.section == "includeif" and entry.subsection is not None)
    )


@attrs.frozen(kw_only=True)
class ConfigFiles:
    """What reading a set of configuration files (with their includes) found: every entry
    in order, and every include target named (existing or not)."""

    entries: tuple[ConfigEntry, ...] = ()
    includes: tuple[str, ...] = ()


def read_regular(path: str, limit: int = MAX_CONFIG_BYTES) -> str | None:
    """The start of a regular file (symlinks followed, as git does); None for anything
    else. Never blocks: a FIFO planted where a configuration file is expected would
    otherwise hang the host before every run."""
    return _read_regular(path, limit)[0]


_PARSED_MAX = 256


class ParsedConfigs:
    """Parsed configuration files by path, with the stamp of the file parsed: read before
    every run, mostly unchanged. A file whose identity, size, mtime and ctime are those of
    the last parse is not parsed again, unless its stamp was too young to be trusted
    (`stamps.settled`). Bounded (`_PARSED_MAX` files, the oldest forgotten).

    Holds nothing outside the process: `close` forgets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parsed: dict[str, tuple[tuple[int, ...], tuple[ConfigEntry, ...]]] = {}

    def entries(self, path: str) -> tuple[ConfigEntry, ...] | None:
        """The entries of the file at `path` (None: no regular file there)."""
        stamp: tuple[int, ...] | None = None
        cached: tuple[ConfigEntry, ...] | None = None

        def stamped(info: os.stat_result) -> bool:
            nonlocal stamp, cached
            stamp = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
            with self._lock:
                known = self._parsed.get(path)
            if known is not None and known[0] == stamp:
                cached = known[1]
            return cached is not None

        text, unchanged = _read_regular(path, MAX_CONFIG_BYTES, stamped)
        if unchanged:
            return cached
        if text is None:
            return None
        entries = parse_config(text, origin=path)
        if stamp is not None and settled(stamp[4]):
            with self._lock:
                self._parsed[path] = (stamp, entries)
                while len(self._parsed) > _PARSED_MAX:
                    del self._parsed[next(iter(self._parsed))]
        return entries

    def close(self) -> None:
        with self._lock:
            self._parsed.clear()


def _parsed(path: str, parsed: ParsedConfigs | None) -> tuple[ConfigEntry, ...] | None:
    if parsed is not None:
        return parsed.entries(path)
    text = read_regular(path)
    return None if text is None else parse_config(text, origin=path)


def _read_regular(
    path: str, limit: int, unchanged: Callable[[os.stat_result], bool] | None = None
) -> tuple[str | None, bool]:
    """(the text, False); or (None, True) when `unchanged` says the file need not be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None, False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, False
        if unchanged is not None and unchanged(info):
            return None, True
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks).decode("utf-8", "replace"), False
    except OSError:
        return None, False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def read_config_files(
    paths: tuple[str, ...], *, home: str, parsed: ParsedConfigs | None = None
) -> ConfigFiles:
    """Read `paths` in order (missing ones are skipped, as git does), following includes
    to `MAX_INCLUDE_DEPTH`. Relative include paths are relative to the including file's
    directory. `parsed`: the files parsed before, reused while unchanged (None: every
    file parsed now)."""
    entries: list[ConfigEntry] = []
    includes: list[str] = []

    def read(path: str, depth: int) -> None:
        found = _parsed(path, parsed)
        if found is None:
            return
        for entry in found:
            entries.append(entry)
            if not is_include(entry) or entry.value is None:
                continue
            target = expand_path(entry.value, relative_to=os.path.dirname(path), home=home)
            if target is None:
                continue
            includes.append(target)
            if depth < MAX_INCLUDE_DEPTH:
                read(target, depth + 1)

    for path in paths:
        read(path, 0)
    return ConfigFiles(entries=tuple(entries), includes=tuple(dict.fromkeys(includes)))
