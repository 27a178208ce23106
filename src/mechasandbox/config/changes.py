"""Explicit changes on top of every configuration layer: the command line's options, or the
same from a library caller (`Application.from_config(changes=...)`).

Unlike a layer, which replaces what it sets, changes extend the policy's lists (`--allow-read
P` adds P to what the files allow) and replace single values (`--timeout`). They are the
caller's own word, so they may widen what the files say.

They are checked by the functions that check the files (`validation`), with the same
messages, each named by its option: `--env: '1X' is not a valid environment variable name`
here is `environment.set: '1X' is ...` in a file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.config import validation
from mechasandbox.config.loading import ResolvedConfig
from mechasandbox.config.validation import Checked
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import Enforcement, HostProcesses, NetworkMode, Policy

Texts = tuple[str, ...]


@attrs.frozen(kw_only=True)
class PolicyChanges:
    """Values already parsed (seconds, bytes); None and empty mean "no change"."""

    allow_read: Texts = ()
    allow_write: Texts = ()
    deny_read: Texts = ()
    deny_write: Texts = ()
    network: NetworkMode | None = None
    allow_domains: Texts = ()
    deny_domains: Texts = ()
    allow_unix_sockets: Texts = ()
    pass_env: Texts = ()
    set_env: tuple[tuple[str, str], ...] = ()
    # Limits attribute -> value, e.g. {"timeout_s": 30.0}: the names of `Limits`; None
    # removes the limit (`--timeout unlimited`).
    limits: tuple[tuple[str, float | int | None], ...] = ()
    best_effort: bool = False
    host_processes: HostProcesses | None = None
    backend: str | None = None
    image: str | None = None
    runtime: str | None = None
    pool_size: int | None = None

    def apply(self, resolved: ResolvedConfig) -> Result[ResolvedConfig, ConfigInvalid]:
        return self.policy(resolved.policy).map(
            lambda policy: attrs.evolve(
                resolved,
                policy=policy,
                backend=self.backend or resolved.backend,
                backend_chosen_by=None if self.backend else resolved.backend_chosen_by,
                image=self.image or resolved.image,
                runtime=self.runtime or resolved.runtime,
                pool_size=resolved.pool_size if self.pool_size is None else self.pool_size,
            )
        )

    def policy(self, base: Policy) -> Result[Policy, ConfigInvalid]:
        """`base` with these changes."""
        problems = self.problems()
        if problems:
            return Failure(ConfigInvalid.together(problems))
        try:
            return Success(self._applied(base))
        except (TypeError, ValueError) as error:  # a value the domain refuses
            return Failure(ConfigInvalid(problem=str(error), source="command line"))

    def problems(self) -> list[ConfigInvalid]:
        """What is wrong with these changes, each problem named by its option."""
        found: list[ConfigInvalid] = []

        def each(option: str, values: Texts, check: Callable[[object], Checked[str]]) -> None:
            for value in values:
                checked = check(value)
                if isinstance(checked, Failure):
                    found.append(ConfigInvalid(problem=checked.failure(), source=option))

        each("--allow-read", self.allow_read, validation.host_path)
        each("--allow-write", self.allow_write, validation.host_path)
        each("--deny-read", self.deny_read, validation.host_path)
        each("--deny-write", self.deny_write, validation.host_path)
        each("--allow-domain", self.allow_domains, validation.domain_pattern)
        each("--deny-domain", self.deny_domains, validation.domain_pattern)
        each("--allow-unix-socket", self.allow_unix_sockets, validation.host_path)
        each("--pass-env", self.pass_env, validation.env_name)
        for name, value in self.set_env:
            pair = validation.env_pair(name, value)
            if isinstance(pair, Failure):
                found.append(ConfigInvalid(problem=pair.failure(), source="--env"))
        for option, text in (("--image", self.image), ("runtime", self.runtime)):
            checked = validation.text(text, option.lstrip("-") + " name")
            if text is not None and isinstance(checked, Failure):
                found.append(ConfigInvalid(problem=checked.failure(), source=option))
        if self.pool_size is not None:
            counted = validation.count(self.pool_size)
            if isinstance(counted, Failure):
                found.append(ConfigInvalid(problem=counted.failure(), source="pool_size"))
        for attribute, limit in self.limits:
            rule = validation.RULE_OF_ATTRIBUTE.get(attribute)
            if rule is None:
                known = ", ".join(validation.RULE_OF_ATTRIBUTE)
                problem = f"unknown limit {attribute!r}; expected one of: {known}"
                found.append(ConfigInvalid(problem=problem, source="limits"))
                continue
            bounded = validation.limit_value(rule, limit)
            if isinstance(bounded, Failure):
                found.append(ConfigInvalid(problem=bounded.failure(), source=rule.option))
        return found

    def _applied(self, base: Policy) -> Policy:
        limit_changes: dict[str, Any] = dict(self.limits)
        limits = attrs.evolve(base.limits, **limit_changes)
        fs = base.filesystem
        net = base.network
        env = base.environment
        return Policy(
            filesystem=attrs.evolve(
                fs,
                readable=fs.readable + self.allow_read,
                writable=fs.writable + self.allow_write,
                deny_read=fs.deny_read + self.deny_read,
                deny_write=fs.deny_write + self.deny_write,
            ),
            network=attrs.evolve(
                net,
                mode=self.network or net.mode,
                allow=net.allow + self.allow_domains,
                deny=net.deny + self.deny_domains,
                allow_unix_sockets=net.allow_unix_sockets + self.allow_unix_sockets,
            ),
            limits=limits,
            environment=attrs.evolve(
                env,
                pass_through=env.pass_through + self.pass_env,
                set=env.set + self.set_env,
            ),
            enforcement=Enforcement.BEST_EFFORT if self.best_effort else base.enforcement,
            host_processes=self.host_processes or base.host_processes,
        )
