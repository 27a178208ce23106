"""Laying one `Settings` layer over a `Policy`: the merge step shared by every layer.

Lists replace the list below them (so a layer can remove entries, which is exactly what
`narrow` then forbids a project file to do); the `environment.set` table merges by name.
Limits are rebuilt one at a time so that a value the domain refuses (`Limits` validates
its bounds) is reported under its own key instead of as an exception.
"""

from __future__ import annotations

from typing import Any

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.catalog import AUTO
from mechasandbox.config.schema import NO_RAY, BackendSettings, RaySettings, Settings, Unlimited
from mechasandbox.config.validation import LIMIT_RULES, limit_value
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import (
    EnvironmentPolicy,
    FilesystemPolicy,
    NetworkPolicy,
    Policy,
)


@attrs.frozen(kw_only=True)
class BackendChoice:
    """Which backend runs the command, and for containers which image and runtime."""

    name: str = AUTO
    image: str | None = None
    runtime: str | None = None
    pool_size: int | None = None
    ray: RaySettings = NO_RAY  # where `ray` sends runs (`[ray]`)


def _apply_limits(limits: Limits, settings: Settings, source: str) -> Result[Limits, ConfigInvalid]:
    for rule in LIMIT_RULES:
        value = getattr(settings.limits, rule.key)
        if value is None:
            continue
        new = None if isinstance(value, Unlimited) else value
        # Checked again (the converter's hooks did for files): `Settings` built in code
        # reach here too, and the message is the one a file would get.
        checked = limit_value(rule, new)
        if isinstance(checked, Failure):
            return Failure(
                ConfigInvalid(problem=checked.failure(), source=source, field=f"limits.{rule.key}")
            )
        try:
            changes: dict[str, Any] = {rule.attribute: new}
            limits = attrs.evolve(limits, **changes)
        except (TypeError, ValueError) as exc:  # the domain's own validators
            return Failure(
                ConfigInvalid(problem=str(exc), source=source, field=f"limits.{rule.key}")
            )
    return Success(limits)


def _pick(new: tuple[str, ...] | None, old: tuple[str, ...]) -> tuple[str, ...]:
    return old if new is None else new


def _merge_set(
    old: tuple[tuple[str, str], ...], new: tuple[tuple[str, str], ...] | None
) -> tuple[tuple[str, str], ...]:
    if new is None:
        return old
    merged = dict(old)
    merged.update(new)
    return tuple(merged.items())


def apply_settings(
    policy: Policy, settings: Settings, source: str
) -> Result[Policy, ConfigInvalid]:
    """`policy` with every key `settings` sets replaced (lists) or merged (`environment.set`)."""
    fs, net, env = settings.filesystem, settings.network, settings.environment
    limits = _apply_limits(policy.limits, settings, source)
    if isinstance(limits, Failure):
        return limits
    try:
        result = Policy(
            filesystem=FilesystemPolicy(
                readable=_pick(fs.readable, policy.filesystem.readable),
                writable=_pick(fs.writable, policy.filesystem.writable),
                deny_read=_pick(fs.deny_read, policy.filesystem.deny_read),
                deny_write=_pick(fs.deny_write, policy.filesystem.deny_write),
                protected=_pick(fs.protected, policy.filesystem.protected),
                toolchains=_pick(fs.toolchains, policy.filesystem.toolchains),
                umask=policy.filesystem.umask if fs.umask is None else fs.umask,
            ),
            network=NetworkPolicy(
                mode=policy.network.mode if net.mode is None else net.mode,
                allow=_pick(net.allow, policy.network.allow),
                deny=_pick(net.deny, policy.network.deny),
                allow_unix_sockets=_pick(net.allow_unix_sockets, policy.network.allow_unix_sockets),
            ),
            limits=limits.unwrap(),
            environment=EnvironmentPolicy(
                allow=_pick(env.allow, policy.environment.allow),
                pass_through=_pick(env.pass_, policy.environment.pass_through),
                set=_merge_set(policy.environment.set, env.set),
            ),
            enforcement=(
                policy.enforcement if settings.enforcement is None else settings.enforcement
            ),
            host_processes=(
                policy.host_processes
                if settings.host_processes is None
                else settings.host_processes
            ),
        )
    except (TypeError, ValueError) as exc:  # settings built in code, bypassing the hooks
        return Failure(ConfigInvalid(problem=f"invalid settings: {exc}", source=source))
    return Success(result)


def apply_backend(
    choice: BackendChoice, settings: BackendSettings, ray: RaySettings = NO_RAY
) -> BackendChoice:
    """`choice` with whatever `settings` and `ray` set; backend keys never fail once
    structured."""
    return BackendChoice(
        name=choice.name if settings.name is None else settings.name,
        image=choice.image if settings.image is None else settings.image,
        runtime=choice.runtime if settings.runtime is None else settings.runtime,
        pool_size=choice.pool_size if settings.pool_size is None else settings.pool_size,
        ray=_apply_ray(choice.ray, ray),
    )


def _apply_ray(old: RaySettings, new: RaySettings) -> RaySettings:
    changes = {
        field.name: value
        for field in attrs.fields(RaySettings)
        if (value := getattr(new, field.name)) is not None
    }
    return attrs.evolve(old, **changes) if changes else old
