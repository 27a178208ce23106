"""The `sandbox` block of `.openagents/project.json`, read as one more project layer.

OpenAgents projects already describe their sandbox there (`enabled`, `backend`, `image`,
`memoryLimit`, `networkEnabled`). Reading it lets those repositories work unchanged, but
the file ships with the repository, so it is a *project* layer: it goes through `narrow`
like `.mechasandbox.toml`, and errors name its own keys (`sandbox.memoryLimit`).

Mapping: `backend` -> `backend.name`, `image` -> `backend.image`, `memoryLimit` ->
`limits.memory`, `networkEnabled: false` -> `network.mode = "none"`. `networkEnabled: true`
asks for a widening, so it changes nothing: the network stays whatever the user allowed.
`enabled: false` does not switch the sandbox off; the block is ignored with a warning. Any
of our own keys (`filesystem`, `limits`, ...) may sit in the block too.
"""

from __future__ import annotations

from typing import Any

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.config import validation
from mechasandbox.config.converter import keys_of, structure_settings
from mechasandbox.config.schema import Settings
from mechasandbox.domain.errors import ConfigInvalid

# our dotted key -> the OpenAgents key it came from, for error messages
_ALIASES = {
    "backend.name": "sandbox.backend",
    "backend.image": "sandbox.image",
    "limits.memory": "sandbox.memoryLimit",
    "network.mode": "sandbox.networkEnabled",
}
_OPENAGENTS_KEYS = ("enabled", "image", "memoryLimit", "networkEnabled")
# Every key the block takes, the OpenAgents ones first (`backend` is both: a name is
# OpenAgents', a table ours), for the unknown-key message. Not `ray`: where runs are sent
# is never a project's to say.
_BLOCK_KEYS = (
    "enabled",
    "backend",
    "image",
    "memoryLimit",
    "networkEnabled",
    *(key for key in keys_of(Settings) if key not in {"backend", "ray"}),
)


@attrs.frozen(kw_only=True)
class OpenAgentsLayer:
    """What the block asks for; `settings` is None when there is nothing to apply."""

    settings: Settings | None
    requests_network: bool = False  # `networkEnabled: true`: reported, never applied
    warnings: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()

    def rename(self, error: ConfigInvalid) -> ConfigInvalid:
        """`error` (and the problems with it) with fields spelled as in project.json
        (`sandbox.memoryLimit`)."""
        return attrs.evolve(
            error,
            field=self.spelling(error.field),
            more=tuple(self.rename(problem) for problem in error.more),
        )

    def spelling(self, field: str | None) -> str:
        """Our dotted key as this file spells it: `limits.memory` -> `sandbox.memoryLimit`."""
        return _rename(field, dict(self.aliases))


def _invalid(problem: str, source: str, field: str | None) -> Failure[ConfigInvalid]:
    return Failure(ConfigInvalid(problem=problem, source=source, field=field))


def openagents_layer(document: object, source: str) -> Result[OpenAgentsLayer, ConfigInvalid]:
    """The project layer described by a parsed `.openagents/project.json`."""
    if not isinstance(document, dict):
        return _invalid("expected a JSON object at the top level", source, None)
    block = document.get("sandbox")
    if block is None:
        return Success(OpenAgentsLayer(settings=None))
    if not isinstance(block, dict):
        return _invalid(f"expected an object, got {block!r}", source, "sandbox")
    enabled = block.get("enabled", True)
    if not isinstance(enabled, bool):
        return _invalid(f"expected true or false, got {enabled!r}", source, "sandbox.enabled")
    if not enabled:
        return Success(
            OpenAgentsLayer(
                settings=None,
                warnings=(
                    f"{source}: sandbox.enabled is false; the block is ignored and the "
                    "command is still confined",
                ),
            )
        )
    unknown = [key for key in block if key not in _BLOCK_KEYS]
    if unknown:
        return Failure(
            ConfigInvalid.together(
                [
                    ConfigInvalid(
                        problem=validation.unknown_key(key, _BLOCK_KEYS),
                        source=source,
                        field=f"sandbox.{key}",
                    )
                    for key in unknown
                ]
            )
        )
    network = block.get("networkEnabled")
    if network is not None and not isinstance(network, bool):
        return _invalid(
            f"expected true or false, got {network!r}", source, "sandbox.networkEnabled"
        )
    own: dict[str, Any] = {
        key: value
        for key, value in block.items()
        if key not in _OPENAGENTS_KEYS and not (key == "backend" and isinstance(value, str))
    }
    mapped: tuple[tuple[str, str, object], ...] = (
        ("backend", "name", block["backend"] if isinstance(block.get("backend"), str) else None),
        ("backend", "image", block.get("image")),
        ("limits", "memory", block.get("memoryLimit")),
        ("network", "mode", "none" if network is False else None),
    )
    aliases: dict[str, str] = {}
    for section, key, value in mapped:
        if value is None:
            continue
        dotted = f"{section}.{key}"
        table = own.setdefault(section, {})
        if not isinstance(table, dict):
            return _invalid(f"expected an object, got {table!r}", source, f"sandbox.{section}")
        if key in table:
            return _invalid(
                f"conflicts with sandbox.{dotted}; set one of them", source, _ALIASES[dotted]
            )
        table[key] = value
        aliases[dotted] = _ALIASES[dotted]
    layer = OpenAgentsLayer(
        settings=None, requests_network=network is True, aliases=tuple(aliases.items())
    )
    structured = structure_settings(own, source)
    if isinstance(structured, Failure):
        return Failure(layer.rename(structured.failure()))
    return Success(attrs.evolve(layer, settings=structured.unwrap()))


def _rename(field: str | None, aliases: dict[str, str]) -> str:
    if not field:
        return "sandbox"
    return aliases.get(field, f"sandbox.{field}")
