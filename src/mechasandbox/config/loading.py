"""Resolving the effective policy from every configuration layer.

Order, lowest first: the packaged defaults, the user file, the project files in the
workspace, `--config` files, explicit overrides (CLI options, API arguments). The user's
own layers may set anything. The project layers ship with the repository the agent works
on, so they go through `narrow`: they may only tighten what the layers below allow.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from importlib import resources

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.config.converter import structure_settings
from mechasandbox.config.files import parse_toml, read_json, read_toml
from mechasandbox.config.narrowing import narrow, narrow_backend
from mechasandbox.config.openagents import PROJECT_JSON, openagents_layer
from mechasandbox.config.overlay import BackendChoice, apply_backend, apply_settings
from mechasandbox.config.schema import Settings
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import NetworkMode, Policy

PROJECT_TOML = ".mechasandbox.toml"
DEFAULTS_SOURCE = "<package defaults>"
OVERRIDES_SOURCE = "<overrides>"


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
    warnings: tuple[str, ...] = ()  # project settings that were ignored, and why


@attrs.frozen(kw_only=True)
class _State:
    policy: Policy
    backend: BackendChoice
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def resolved(self) -> ResolvedConfig:
        return ResolvedConfig(
            policy=self.policy,
            backend=self.backend.name.value,
            image=self.backend.image,
            runtime=self.backend.runtime,
            files=self.files,
            warnings=self.warnings,
        )


def default_user_file(environ: Mapping[str, str] | None = None) -> str:
    """`$XDG_CONFIG_HOME/mechasandbox/config.toml`, else `~/.config/mechasandbox/config.toml`."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return os.path.join(base, "mechasandbox", "config.toml")


def _defaults() -> Result[tuple[str, Settings], ConfigInvalid]:
    resource = resources.files("mechasandbox").joinpath("defaults/default.toml")
    try:
        text = resource.read_text(encoding="utf-8")
    except OSError as exc:  # a broken installation
        return Failure(
            ConfigInvalid(problem=f"packaged defaults unreadable: {exc}", source=DEFAULTS_SOURCE)
        )
    source = str(resource)
    return (
        parse_toml(text, source)
        .bind(lambda data: structure_settings(data, source))
        .map(lambda settings: (source, settings))
    )


def _toml_layer(path: str) -> Result[Settings, ConfigInvalid]:
    return read_toml(path).bind(lambda data: structure_settings(data, path))


def _user_layer(state: _State, *, path: str) -> Result[_State, ConfigInvalid]:
    """A layer of the user's own: it may set, widen or narrow anything."""
    return _toml_layer(path).bind(lambda settings: _widen(state, settings, path, path))


def _user_layers(state: _State, paths: Sequence[str]) -> Result[_State, ConfigInvalid]:
    result: Result[_State, ConfigInvalid] = Success(state)
    for path in paths:
        result = result.bind(partial(_user_layer, path=path))
    return result


def _widen(
    state: _State, settings: Settings, source: str, file: str | None
) -> Result[_State, ConfigInvalid]:
    return apply_settings(state.policy, settings, source).map(
        lambda policy: attrs.evolve(
            state,
            policy=policy,
            backend=apply_backend(state.backend, settings.backend),
            files=state.files if file is None else (*state.files, file),
        )
    )


def _narrow(
    state: _State,
    settings: Settings,
    source: str,
    workspace: str,
    rename: Callable[[ConfigInvalid], ConfigInvalid] = lambda error: error,
) -> Result[_State, ConfigInvalid]:
    policy = narrow(state.policy, settings, source, workspace=workspace).alt(rename)
    backend = narrow_backend(state.backend, settings.backend, source).alt(rename)
    return policy.bind(
        lambda narrowed: backend.map(
            lambda chosen: attrs.evolve(
                state,
                policy=narrowed,
                backend=chosen.choice,
                files=(*state.files, source),
                warnings=(*state.warnings, *chosen.warnings),
            )
        )
    )


def _project_toml(state: _State, workspace: str) -> Result[_State, ConfigInvalid]:
    path = os.path.join(workspace, PROJECT_TOML)
    if not os.path.lexists(path):
        return Success(state)
    return _toml_layer(path).bind(lambda settings: _narrow(state, settings, path, workspace))


def _project_json(state: _State, workspace: str) -> Result[_State, ConfigInvalid]:
    path = os.path.join(workspace, PROJECT_JSON)
    if not os.path.lexists(path):
        return Success(state)
    layer_result = read_json(path).bind(lambda document: openagents_layer(document, path))
    if isinstance(layer_result, Failure):
        return layer_result
    layer = layer_result.unwrap()
    warnings = list(layer.warnings)
    if layer.requests_network and state.policy.network.mode is NetworkMode.NONE:
        warnings.append(
            f"{path}: sandbox.networkEnabled is true, but the user policy allows no network; "
            "it stays off (enable it in the user configuration or with --network)"
        )
    noted = attrs.evolve(state, warnings=(*state.warnings, *warnings))
    if layer.settings is None:
        return Success(attrs.evolve(noted, files=(*noted.files, path)))
    return _narrow(noted, layer.settings, path, workspace, layer.rename)


def _workspace(workspace: str) -> Result[str, ConfigInvalid]:
    if not workspace or not os.path.isdir(workspace):
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
    overrides: Settings = Settings(),  # noqa: B008 - an immutable value
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
    defaults = _defaults()
    if isinstance(defaults, Failure):
        return defaults
    defaults_source, defaults_settings = defaults.unwrap()
    start = _widen(
        _State(policy=Policy(), backend=BackendChoice()),
        defaults_settings,
        defaults_source,
        defaults_source,
    )
    if user_file is DISCOVER:
        discovered = default_user_file()
        user_path: str | None = discovered if os.path.lexists(discovered) else None
    else:
        user_path = user_file if isinstance(user_file, str) else None

    state = start
    if user_path is not None:
        state = state.bind(partial(_user_layer, path=user_path))
    state = state.bind(lambda current: _project_toml(current, root))
    state = state.bind(lambda current: _project_json(current, root))
    state = state.bind(lambda current: _user_layers(current, extra_files))
    state = state.bind(lambda current: _widen(current, overrides, OVERRIDES_SOURCE, None))
    return state.map(lambda final: final.resolved())


__all__ = [
    "DEFAULTS_SOURCE",
    "DISCOVER",
    "OVERRIDES_SOURCE",
    "PROJECT_TOML",
    "ResolvedConfig",
    "UserFile",
    "default_user_file",
    "load_policy",
]
