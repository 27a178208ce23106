"""Configuration: the settings schema, file loading, and the project-may-only-narrow rule.

The names below are imported lazily (PEP 562): a run with no configuration file but the
packaged defaults imports `loading` only (see there); type checkers see the real imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mechasandbox.lazy import lazy_attributes

if TYPE_CHECKING:
    from mechasandbox.config.converter import structure_settings
    from mechasandbox.config.loading import (
        DISCOVER,
        PROJECT_JSON,
        PROJECT_TOML,
        ResolvedConfig,
        UserFile,
        default_user_file,
        load_policy,
    )
    from mechasandbox.config.narrowing import (
        NarrowedBackend,
        narrow,
        narrow_backend,
        pattern_covers,
    )
    from mechasandbox.config.openagents import OpenAgentsLayer, openagents_layer
    from mechasandbox.config.overlay import BackendChoice, apply_backend, apply_settings
    from mechasandbox.config.schema import (
        UNLIMITED,
        BackendSettings,
        EnvironmentSettings,
        FilesystemSettings,
        LimitsSettings,
        NetworkSettings,
        Settings,
        Unlimited,
    )

_MODULES = {
    "converter": ("structure_settings",),
    "loading": (
        "DISCOVER",
        "PROJECT_JSON",
        "PROJECT_TOML",
        "ResolvedConfig",
        "UserFile",
        "default_user_file",
        "load_policy",
    ),
    "narrowing": ("NarrowedBackend", "narrow", "narrow_backend", "pattern_covers"),
    "openagents": ("OpenAgentsLayer", "openagents_layer"),
    "overlay": ("BackendChoice", "apply_backend", "apply_settings"),
    "schema": (
        "UNLIMITED",
        "BackendSettings",
        "EnvironmentSettings",
        "FilesystemSettings",
        "LimitsSettings",
        "NetworkSettings",
        "Settings",
        "Unlimited",
    ),
}
_LOCATIONS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "DISCOVER",
    "PROJECT_JSON",
    "PROJECT_TOML",
    "UNLIMITED",
    "BackendChoice",
    "BackendSettings",
    "EnvironmentSettings",
    "FilesystemSettings",
    "LimitsSettings",
    "NarrowedBackend",
    "NetworkSettings",
    "OpenAgentsLayer",
    "ResolvedConfig",
    "Settings",
    "Unlimited",
    "UserFile",
    "apply_backend",
    "apply_settings",
    "default_user_file",
    "load_policy",
    "narrow",
    "narrow_backend",
    "openagents_layer",
    "pattern_covers",
    "structure_settings",
]


__getattr__ = lazy_attributes(__name__, _LOCATIONS)
