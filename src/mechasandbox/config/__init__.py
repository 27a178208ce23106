"""Configuration: the settings schema, file loading, and the project-may-only-narrow rule."""

from mechasandbox.config.converter import structure_settings
from mechasandbox.config.loading import (
    DISCOVER,
    PROJECT_TOML,
    ResolvedConfig,
    UserFile,
    default_user_file,
    load_policy,
)
from mechasandbox.config.narrowing import NarrowedBackend, narrow, narrow_backend, pattern_covers
from mechasandbox.config.openagents import PROJECT_JSON, OpenAgentsLayer, openagents_layer
from mechasandbox.config.overlay import BackendChoice, apply_backend, apply_settings
from mechasandbox.config.schema import (
    UNLIMITED,
    BackendName,
    BackendSettings,
    EnvironmentSettings,
    FilesystemSettings,
    LimitsSettings,
    NetworkSettings,
    Settings,
    Unlimited,
)

__all__ = [
    "DISCOVER",
    "PROJECT_JSON",
    "PROJECT_TOML",
    "UNLIMITED",
    "BackendChoice",
    "BackendName",
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
