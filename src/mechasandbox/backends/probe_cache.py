"""A per-user record of successful backend probes, so that a one-shot process (the CLI)
does not repeat an expensive probe (bubblewrap's runs a trial sandbox) on every call.

Only successes are recorded, each with the facts the probe's answer depends on (the
backend's `key`: the executable's identity, the kernel, the relevant sysctls...) and a
maximum age. A record is used only while every fact still matches; otherwise the backend
probes afresh and replaces it. A failure is never recorded, so a host that gains the
ability is noticed at once. A record that is stale anyway (something changed that its key
does not name) cannot weaken a run: the backend still runs everything through its
sandboxing tool, which then fails with its own error, and nothing runs unsandboxed.

The records live in `$XDG_CACHE_HOME/mechasandbox` (else `~/.cache/mechasandbox`), a
directory of mode 0700, one file of mode 0600 per probe. A directory or file that is not
the user's own or that others may write is ignored, never repaired, and nothing is created
below a directory that is not the user's.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Mapping
from typing import Any

import attrs

from mechasandbox.private_files import private_to_user

FORMAT = 1
MAX_AGE_S = 24 * 3600.0
_MAX_BYTES = 64 * 1024


def default_directory(environ: Mapping[str, str] | None = None) -> str:
    """`$XDG_CACHE_HOME/mechasandbox`, else `~/.cache/mechasandbox`."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "mechasandbox")


def in_own_tree(path: str) -> bool:
    """Whether the nearest existing directory at or above `path` is this user's: nothing is
    created in someone else's tree (`sudo` that keeps the caller's HOME, for one)."""
    current = os.path.abspath(path)
    while True:
        try:
            return os.stat(current).st_uid == os.geteuid()
        except FileNotFoundError:
            parent = os.path.dirname(current)
            if parent == current:
                return False
            current = parent
        except OSError:
            return False


@attrs.frozen(kw_only=True)
class ProbeCache:
    """Successful probes remembered in `directory`, each for at most `max_age_s`.

    `refresh`: answer nothing from the records, so that every probe runs, and record what
    it finds (`doctor`, which reports what holds here and now)."""

    directory: str = attrs.field(factory=default_directory)
    max_age_s: float = MAX_AGE_S
    refresh: bool = False

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.json")

    def _directory_ok(self) -> bool:
        try:
            return private_to_user(os.lstat(self.directory), stat.S_IFDIR)
        except OSError:
            return False

    def load(self, name: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The value recorded for probe `name` under exactly `key`, if fresh; else None."""
        if self.refresh or not self._directory_ok():
            return None
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if not private_to_user(os.fstat(fd), stat.S_IFREG):
                return None
            record = json.loads(os.read(fd, _MAX_BYTES))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            return None
        recorded = record.get("at")
        if not isinstance(recorded, int | float) or not 0 <= time.time() - recorded <= (
            self.max_age_s
        ):
            return None
        value = record.get("value")
        if record.get("key") != dict(key) or not isinstance(value, dict):
            return None
        return value

    def store(self, name: str, key: Mapping[str, Any], value: Mapping[str, Any]) -> None:
        """Record a successful probe (replacing any earlier record). Best effort: a cache
        that cannot be written only costs the next process a probe."""
        import tempfile  # only a process that probed writes: not on the start-up path

        from mechasandbox.leftovers import sweep_temp_dir, temp_prefix

        record = {"format": FORMAT, "at": time.time(), "key": dict(key), "value": dict(value)}
        if not in_own_tree(self.directory):
            return
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(self.directory) or ".", mode=0o700, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.directory, 0o700)
            if not self._directory_ok():
                return
            sweep_temp_dir(self.directory)  # what a process killed while storing left
            fd, temporary = tempfile.mkstemp(prefix=temp_prefix("probe"), dir=self.directory)
            try:
                with os.fdopen(fd, "w") as file:  # mkstemp: mode 0600
                    json.dump(record, file)
                os.replace(temporary, self._path(name))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise

    def forget(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._path(name))
