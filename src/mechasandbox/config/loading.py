"""Resolving the effective policy from every configuration layer.

Order, lowest first: the packaged defaults, the user file, the project files in the
workspace, `--config` files, explicit overrides (CLI options, API arguments). The user's
own layers may set anything. The project layers ship with the repository the agent works
on, so they go through `narrow`: they may only tighten what the layers below allow.

Most calls have no layer but the packaged defaults, which describe exactly `Policy()` and
the `auto` backend (a unit test holds them together). When the packaged file is the one
that test saw (its digest) and no other layer exists, the result is known without parsing
or structuring anything (`layers`, cattrs and tomllib are then not even imported); an
edited defaults file is read like any other layer.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.config.schema import RaySettings
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import Policy

if TYPE_CHECKING:
    from mechasandbox.config.schema import Settings

PROJECT_TOML = ".mechasandbox.toml"
PROJECT_JSON = ".openagents/project.json"
DEFAULTS_SOURCE = "<package defaults>"
OVERRIDES_SOURCE = "<overrides>"
# sha256 of defaults/default.toml as the unit test that holds it equal to `Policy()` saw it.
DEFAULTS_DIGEST = "8da326cf694d114ea34bdc30d013428ea1ab685a96c904fd8f99af87190e6143"
DEFAULTS_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "defaults", "default.toml")


class UserFile(enum.Enum):
    """`DISCOVER`: use `default_user_file()` if that file exists, else no user file."""

    DISCOVER = "discover"


DISCOVER = UserFile.DISCOVER


@attrs.frozen(kw_only=True)
class ResolvedConfig:
    """The effective configuration of a run, and where it came from."""

    policy: Policy
    backend: str  # "auto", "bubblewrap", ... as in `--backend`
    image: str | None
    runtime: str | None
    files: tuple[str, ...]  # every file read, lowest layer first
    pool_size: int | None = None  # docker: containers started ahead of runs
    ray: RaySettings = RaySettings()  # `[ray]`: where the `ray` backend sends runs
    warnings: tuple[str, ...] = ()  # project settings that were ignored, and why
    # Where a project file chose `backend` (`path: sandbox.backend`), None when the user's
    # own layers (or `auto`) did: a run that finds it unavailable says who chose it.
    backend_chosen_by: str | None = None


def default_user_file(environ: Mapping[str, str] | None = None) -> str:
    """`$XDG_CONFIG_HOME/mechasandbox/config.toml`, else `~/.config/mechasandbox/config.toml`."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return os.path.join(base, "mechasandbox", "config.toml")


def _known_defaults() -> ResolvedConfig | None:
    """The packaged defaults' result, when the file is the one whose digest we know."""
    try:
        with open(DEFAULTS_FILE, "rb") as stream:
            content = stream.read()
    except OSError:
        return None
    if hashlib.sha256(content).hexdigest() != DEFAULTS_DIGEST:
        return None
    return ResolvedConfig(
        policy=Policy(), backend="auto", image=None, runtime=None, files=(DEFAULTS_FILE,)
    )


def project_file_at(path: str) -> bool:
    """Whether there is a project file to read at `path`. An empty directory does not
    count: it is what a bubblewrap run of another process covers a missing protected path
    with (`.mechasandbox.toml` is one) while it runs; it holds no policy to narrow with."""
    if not os.path.lexists(path):
        return False
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    except OSError:  # not a directory (the usual file), or unreadable: read it and say so
        return True


def _has_project_files(root: str) -> bool:
    return any(project_file_at(os.path.join(root, name)) for name in (PROJECT_TOML, PROJECT_JSON))


def _workspace(workspace: str) -> Result[str, ConfigInvalid]:
    if not workspace or "\0" in workspace or not os.path.isdir(workspace):
        return Failure(
            ConfigInvalid(
                problem=f"workspace {workspace!r} is not an existing directory",
                source="workspace",
            )
        )
    return Success(os.path.abspath(workspace))


def load_policy(
    *,
    workspace: str,
    user_file: str | UserFile | None = DISCOVER,
    extra_files: Sequence[str] = (),
    overrides: Settings | None = None,
) -> Result[ResolvedConfig, ConfigInvalid]:
    """The effective policy for a run in `workspace`, merged from every layer.

    `user_file`: a path (which must exist), `None` for none, or `DISCOVER` for the default
    location if present. `extra_files` are `--config` files, which must exist.
    `overrides` are the caller's explicit values (build them with `structure_settings`).
    """
    checked = _workspace(workspace)
    if isinstance(checked, Failure):
        return checked
    root = checked.unwrap()
    if user_file is DISCOVER:
        discovered = default_user_file()
        user_path: str | None = discovered if os.path.lexists(discovered) else None
    else:
        user_path = user_file if isinstance(user_file, str) else None
    if user_path is None and not extra_files and overrides is None:
        known = None if _has_project_files(root) else _known_defaults()
        if known is not None:
            return Success(known)
    from mechasandbox.config import layers  # cattrs, tomllib: only when there is a layer

    return layers.resolve(root, user_path, extra_files, overrides)
