"""Names a package exports but imports only when first used (PEP 562): `mechasandbox`,
`mechasandbox.config` and `mechasandbox.network.proxy` keep their imports light so that
the CLI and the spawn helper start fast, while type checkers see the real imports."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing `typing` costs every start
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def lazy_attributes(package: str, locations: Mapping[str, str]) -> Callable[[str], Any]:
    """The `__getattr__` of `package`: each name of `locations` from the module it names
    (absolute, or a submodule of `package` when it has no dot), imported at the name's
    first use."""

    def attribute(name: str) -> Any:
        where = locations.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = where if "." in where else f"{package}.{where}"
        return getattr(importlib.import_module(module), name)

    return attribute
