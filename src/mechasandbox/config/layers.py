"""The configuration layers, merged in order over the packaged defaults (see `loading`):
each file read, structured (cattrs) and laid over the policy so far; the project's layers
through `narrow`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.catalog import AUTO
from mechasandbox.config import loading
from mechasandbox.config.converter import structure_settings
from mechasandbox.config.files import parse_toml, read_json, read_toml
from mechasandbox.config.loading import (
    DEFAULTS_SOURCE,
    OVERRIDES_SOURCE,
    PROJECT_JSON,
    PROJECT_TOML,
    ResolvedConfig,
    project_file_at,
)
from mechasandbox.config.narrowing import narrow, narrow_backend
from mechasandbox.config.openagents import openagents_layer
from mechasandbox.config.overlay import BackendChoice, apply_backend, apply_settings
from mechasandbox.config.schema import Settings
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import Enforcement, NetworkMode, Policy


@attrs.frozen(kw_only=True)
class _State:
    policy: Policy
    backend: BackendChoice
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # Where a project file chose the backend (`file: backend.name`), while no user layer
    # has chosen one since.
    project_backend: str | None = None

    def resolved(self) -> ResolvedConfig:
        return ResolvedConfig(
            policy=self.policy,
            backend=self.backend.name,
            image=self.backend.image,
            runtime=self.backend.runtime,
            pool_size=self.backend.pool_size,
            ray=self.backend.ray,
            files=self.files,
            warnings=self.warnings,
            backend_chosen_by=self.project_backend,
        )


def _defaults() -> Result[tuple[str, Settings], ConfigInvalid]:
    source = loading.DEFAULTS_FILE
    try:
        with open(source, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as exc:  # a broken installation
        return Failure(
            ConfigInvalid(problem=f"packaged defaults unreadable: {exc}", source=DEFAULTS_SOURCE)
        )
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
            backend=apply_backend(state.backend, settings.backend, settings.ray),
            files=state.files if file is None else (*state.files, file),
            project_backend=(state.project_backend if settings.backend.name is None else None),
        )
    )


def _narrow(
    state: _State,
    settings: Settings,
    source: str,
    workspace: str,
    rename: Callable[[ConfigInvalid], ConfigInvalid] = lambda error: error,
    spelling: Callable[[str], str] = lambda field: field,
) -> Result[_State, ConfigInvalid]:
    policy = narrow(state.policy, settings, source, workspace=workspace).alt(rename)
    backend = narrow_backend(state.backend, settings.backend, source, settings.ray).alt(rename)
    return policy.bind(
        lambda narrowed: backend.map(
            lambda chosen: attrs.evolve(
                state,
                policy=narrowed,
                backend=chosen.choice,
                files=(*state.files, source),
                warnings=(*state.warnings, *chosen.warnings),
                project_backend=(
                    f"{source}: {spelling('backend.name')}"
                    if chosen.choice.name != state.backend.name
                    else state.project_backend
                ),
            )
        )
    )


def _project_toml(state: _State, workspace: str) -> Result[_State, ConfigInvalid]:
    path = os.path.join(workspace, PROJECT_TOML)
    if not project_file_at(path):
        return Success(state)
    return (
        read_toml(path, follow=False)
        .bind(lambda data: structure_settings(data, path))
        .bind(lambda settings: _narrow(state, settings, path, workspace))
    )


def _project_json(state: _State, workspace: str) -> Result[_State, ConfigInvalid]:
    path = os.path.join(workspace, PROJECT_JSON)
    if not project_file_at(path):
        return Success(state)
    if os.path.islink(os.path.dirname(path)):
        # The repository's directory: followed, it would have the caller read any file.
        return Failure(
            ConfigInvalid(problem="its directory is a symlink; refusing to follow", source=path)
        )
    layer_result = read_json(path, follow=False).bind(
        lambda document: openagents_layer(document, path)
    )
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
    return _narrow(noted, layer.settings, path, workspace, layer.rename, layer.spelling)


def resolve(
    root: str, user_path: str | None, extra_files: Sequence[str], overrides: Settings | None
) -> Result[ResolvedConfig, ConfigInvalid]:
    """Every layer over the packaged defaults, for a run in the workspace `root`."""
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
    state = start
    if user_path is not None:
        state = state.bind(partial(_user_layer, path=user_path))
    state = state.bind(lambda current: _project_toml(current, root))
    state = state.bind(lambda current: _project_json(current, root))
    state = state.bind(lambda current: _user_layers(current, extra_files))
    if overrides is not None:
        state = state.bind(lambda current: _widen(current, overrides, OVERRIDES_SOURCE, None))
    return state.map(_backend_kept_strict).map(lambda final: final.resolved())


def _backend_kept_strict(state: _State) -> _State:
    """A project's choice of backend stands only for a strict policy: there every backend
    enforces all the policy asks or refuses to run, so the choice cannot weaken the run. A
    best-effort run would take whatever the chosen backend leaves out; `auto` picks then."""
    if state.project_backend is None or state.policy.enforcement is not Enforcement.BEST_EFFORT:
        return state
    warning = (
        f"{state.project_backend} = {state.backend.name!r} ignored: a "
        "project file chooses the backend of strict runs only (this one is best-effort)"
    )
    return attrs.evolve(
        state,
        backend=attrs.evolve(state.backend, name=AUTO),
        warnings=(*state.warnings, warning),
    )
